"""d3rlpy's DecisionTransformer on our datasets: the side-by-side baseline.

Runs in its own virtual environment (d3rlpy pins gymnasium==1.0.0), set up by
`bash experiments/setup_d3rlpy.sh`. The other experiment scripts call it as a subprocess:

    .venv-d3rlpy/bin/python experiments/d3rlpy_baseline.py speed   --dataset zoo/hopper/medium-v0
    .venv-d3rlpy/bin/python experiments/d3rlpy_baseline.py latency
    .venv-d3rlpy/bin/python experiments/d3rlpy_baseline.py train   --dataset zoo/hopper/medium-v0 --steps 5000

Config = d3rlpy's reproduction script reproductions/offline/decision_transformer.py (batch 64,
lr 1e-4, GPTAdamW wd 1e-4, grad clip 0.25, 10k warm-up, 128-unit encoder, K=20, 1 head, 3 layers,
reward scale 0.001, standardised observations). Each command prints one JSON line.
"""

import argparse
import json
import time

import minari
import numpy as np
import torch

TARGETS = {"Hopper": 3600.0, "Walker2d": 5000.0, "HalfCheetah": 6000.0}


def load(ids):
    """Minari ids -> d3rlpy MDPDataset (the first T of T+1 observations, terminal/timeout kept apart)."""
    import d3rlpy

    obs, act, rew, term, tout, env_id, ref = [], [], [], [], [], None, None
    for dataset_id in ids:
        ds = minari.load_dataset(dataset_id)
        env_id = ds.spec.env_spec.id
        meta = ds.storage.metadata
        ref = (meta["ref_min_score"], meta["ref_max_score"])
        for ep in ds.iterate_episodes():
            obs.append(ep.observations[:-1])
            act.append(ep.actions)
            rew.append(ep.rewards)
            term.append(ep.terminations)
            # d3rlpy wants terminal XOR timeout: a fall on the time limit's last step is a terminal
            last = np.arange(len(ep.rewards)) == len(ep.rewards) - 1
            tout.append((ep.truncations | last) & ~ep.terminations)
    dataset = d3rlpy.dataset.MDPDataset(
        np.concatenate(obs), np.concatenate(act), np.concatenate(rew).astype(np.float32),
        np.concatenate(term).astype(np.float32), np.concatenate(tout).astype(np.float32),
        action_space=d3rlpy.constants.ActionSpace.CONTINUOUS,
    )
    return dataset, env_id, ref


def make_dt(device="cpu:0", lr=1e-4, warmup=10000):
    import d3rlpy

    return d3rlpy.algos.DecisionTransformerConfig(
        batch_size=64,
        learning_rate=lr,
        optim_factory=d3rlpy.optimizers.GPTAdamWFactory(
            weight_decay=1e-4,
            clip_grad_norm=0.25,
            lr_scheduler_factory=d3rlpy.optimizers.WarmupSchedulerFactory(warmup_steps=warmup),
        ),
        encoder_factory=d3rlpy.models.VectorEncoderFactory([128], exclude_last_activation=True),
        observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        reward_scaler=d3rlpy.preprocessing.MultiplyRewardScaler(0.001),
        context_size=20,
        num_heads=1,
        num_layers=3,
        max_timestep=1000,
    ).create(device=device)


def fit(dt, dataset, steps, callback=None):
    """Train `steps` updates; returns training wall-clock, excluding time spent in `callback`."""
    import d3rlpy

    spent = 0.0

    def timed_callback(algo, epoch, step):
        nonlocal spent
        t = time.perf_counter()
        callback(algo, step)
        spent += time.perf_counter() - t

    t0 = time.perf_counter()
    dt.fit(dataset, n_steps=steps, n_steps_per_epoch=steps, show_progress=False,
           logger_adapter=d3rlpy.logging.NoopAdapterFactory(), save_interval=10**9,
           callback=timed_callback if callback else None)
    return time.perf_counter() - t0 - spent


def cmd_speed(args):
    dataset, _, _ = load(args.dataset)
    dt = make_dt(args.device)
    fit(dt, dataset, 5)  # build + warm up
    wall = fit(dt, dataset, args.steps)
    return {"impl": "d3rlpy DecisionTransformer", "updates_per_s": args.steps / wall, "steps": args.steps,
            "threads": torch.get_num_threads()}


def cmd_latency(args):
    dataset, env_id, _ = load(args.dataset)
    dt = make_dt()
    fit(dt, dataset, 1)
    wrapper = dt.as_stateful_wrapper(target_return=TARGETS[env_id.split("-")[0]])
    obs = dataset.episodes[0].observations
    times = []
    for i in range(args.steps + 50):
        t0 = time.perf_counter()
        wrapper.predict(obs[i % len(obs)], 1.0)
        times.append(time.perf_counter() - t0)
        if i % 1000 == 999:
            wrapper.reset()
    times = np.array(times[50:]) * 1e6
    return {"impl": "d3rlpy DT stateful wrapper", "median_us": float(np.median(times)),
            "p99_us": float(np.percentile(times, 99)), "calls": args.steps}


def evaluate(dt, env_id, ref, episodes, seed, target=None):
    """Sequential episodes with d3rlpy's stateful wrapper; episode e starts from env seed `seed + e`
    (the same start states as decision_rnn's batched rollout with that seed)."""
    import gymnasium as gym

    target = target or TARGETS[env_id.split("-")[0]]
    env = gym.make(env_id)
    returns = []
    for e in range(episodes):
        wrapper = dt.as_stateful_wrapper(target_return=target)
        obs, _ = env.reset(seed=seed + e)
        reward, total, done = 0.0, 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(wrapper.predict(obs, reward))
            total += reward
            done = terminated or truncated
        returns.append(total)
    returns = np.array(returns)
    return returns, 100 * (returns - ref[0]) / (ref[1] - ref[0])


def cmd_train(args):
    """Train, score the last model; optionally a learning curve (every N updates) and a target sweep."""
    import d3rlpy

    d3rlpy.seed(args.seed)
    dataset, env_id, ref = load(args.dataset)
    dt = make_dt(args.device, lr=args.lr, warmup=args.warmup)
    eval_seed = args.eval_seed if args.eval_seed is not None else args.seed
    curve = []

    def checkpoint_score(algo, step):
        if args.curve_every and step % args.curve_every == 0 and step < args.steps:
            scores = evaluate(algo, env_id, ref, args.episodes, eval_seed)[1]
            curve.append({"step": step, "score": float(scores.mean())})

    wall = fit(dt, dataset, args.steps, callback=checkpoint_score)
    returns, scores = evaluate(dt, env_id, ref, args.episodes, seed=eval_seed)
    curve.append({"step": args.steps, "score": float(scores.mean())})
    sweep = [{"target": t, "score": float(evaluate(dt, env_id, ref, args.episodes, eval_seed, target=t)[1].mean())}
             for t in args.sweep]
    return {"impl": "d3rlpy DecisionTransformer", "datasets": args.dataset, "seed": args.seed,
            "steps": args.steps, "lr": args.lr, "warmup": args.warmup, "train_wall_s": wall,
            "score_mean": float(scores.mean()), "score_std": float(scores.std()),
            "return_mean": float(returns.mean()), "episodes": args.episodes,
            "curve": curve, "sweep": sweep}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["speed", "latency", "train"])
    p.add_argument("--dataset", action="append")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu:0")
    p.add_argument("--lr", type=float, default=1e-4, help="train: learning rate (the reproduction's 1e-4)")
    p.add_argument("--warmup", type=int, default=10000, help="train: warm-up updates (the reproduction's 10k)")
    p.add_argument("--eval-seed", type=int, default=None, help="train: first env seed of the evaluation episodes")
    p.add_argument("--curve-every", type=int, default=0, help="train: also score the model every N updates")
    p.add_argument("--sweep", type=float, nargs="*", default=[],
                   help="train: score the last model at these targets too")
    args = p.parse_args()
    args.dataset = args.dataset or ["zoo/hopper/medium-v0"]
    torch.set_num_threads(args.threads)
    print(json.dumps({"speed": cmd_speed, "latency": cmd_latency, "train": cmd_train}[args.command](args)))


if __name__ == "__main__":
    main()

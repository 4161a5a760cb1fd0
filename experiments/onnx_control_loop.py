"""A control loop that needs only numpy + onnxruntime (+ gymnasium for the simulated plant).

    decision-rnn export runs/hopper-mingru --format onnx        # writes .../policy.onnx
    python experiments/onnx_control_loop.py runs/hopper-mingru/checkpoints/step_00100000/policy.onnx

The exported step function takes (obs, prev_action, returns_to_go, timestep, *state) and returns
(action, *next_state); normalization is inside. The state starts at zeros of the shapes stored in
the file's metadata, and is carried from one call to the next: constant time per step.
"""

import argparse
import json

import gymnasium as gym
import numpy as np
import onnxruntime as ort


class OnnxPolicy:
    """Stateful wrapper around the exported step function, batch size 1."""

    def __init__(self, path: str):
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.state_shapes = json.loads(meta["state_shapes"])
        self.act_dim = json.loads(meta["model_config"])["act_dim"]
        self.input_names = [i.name for i in self.session.get_inputs()]

    def reset(self, target_return: float) -> None:
        self.rtg = np.array([target_return], np.float32)
        self.prev_action = np.zeros((1, self.act_dim), np.float32)
        self.timestep = np.zeros(1, np.int64)
        self.state = [np.zeros([1, *shape], np.float32) for shape in self.state_shapes]

    def act(self, obs: np.ndarray, reward: float = 0.0) -> np.ndarray:
        self.rtg = self.rtg - np.float32(reward)  # reward received since the previous act (0 at the start)
        inputs = [obs[None].astype(np.float32), self.prev_action, self.rtg, self.timestep, *self.state]
        action, *self.state = self.session.run(None, dict(zip(self.input_names, inputs)))
        self.prev_action, self.timestep = action, self.timestep + 1
        return action[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("onnx")
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--target-return", type=float, default=3600.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    policy, env = OnnxPolicy(args.onnx), gym.make(args.env)
    policy.reset(args.target_return)
    obs, _ = env.reset(seed=args.seed)
    reward, total, steps, done = 0.0, 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy.act(obs, reward))
        total, steps, done = total + reward, steps + 1, terminated or truncated
    print(json.dumps({"env": args.env, "return": total, "steps": steps}))


if __name__ == "__main__":
    main()

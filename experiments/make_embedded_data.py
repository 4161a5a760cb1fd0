"""Write the small embedded Minari dataset ``data/hopper-medium-small-v0`` used by tests and examples.

40 episodes of zoo/hopper/medium-v0, chosen deterministically at evenly spaced ranks of the episode
return (lowest to highest), so the return spread of the full dataset is kept. Written with Minari's
own ``create_dataset_from_buffers``; each episode records its source episode id in its metadata.

    MINARI_DATASETS_PATH=../shared/minari python experiments/make_embedded_data.py
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import warnings

import minari
import numpy as np
from minari.data_collector import EpisodeBuffer

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE_ID = "zoo/hopper/medium-v0"
DATASET_ID = "hopper-medium-small-v0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "data")
    args = parser.parse_args()

    source = minari.load_dataset(SOURCE_ID)
    returns = np.array([episode.rewards.sum(dtype=np.float64) for episode in source.iterate_episodes()])
    ranks = np.linspace(0, len(returns) - 1, args.episodes).round().astype(int)
    chosen = np.sort(np.argsort(returns, kind="stable")[ranks])  # keep the source order
    episodes = list(source.iterate_episodes(chosen))
    seeds = [m.get("seed") for m in source.storage.get_episode_metadata(chosen)]
    buffers = [
        EpisodeBuffer(
            seed=seed,
            observations=e.observations,
            actions=e.actions,
            rewards=e.rewards,
            terminations=e.terminations,
            truncations=e.truncations,
        )
        for e, seed in zip(episodes, seeds, strict=True)
    ]

    target = args.out / DATASET_ID
    if target.exists():
        shutil.rmtree(target)
    os.environ["MINARI_DATASETS_PATH"] = str(args.out)  # create_dataset_from_buffers writes under it
    metadata = source.storage.metadata
    with warnings.catch_warnings():  # missing author e-mail, code permalink, eval env: not applicable here
        warnings.simplefilter("ignore", UserWarning)
        dataset = minari.create_dataset_from_buffers(
            dataset_id=DATASET_ID,
            buffer=buffers,
            env=source.env_spec,
            observation_space=source.observation_space,
            action_space=source.action_space,
            algorithm_name=metadata.get("algorithm_name"),
            author="decision-rnn",
            ref_min_score=metadata["ref_min_score"],
            ref_max_score=metadata["ref_max_score"],
            description=(
                f"{args.episodes} episodes of {SOURCE_ID} at evenly spaced return ranks "
                "(experiments/make_embedded_data.py)."
            ),
        )
    dataset.storage.update_episode_metadata([{"source_episode_id": int(i)} for i in chosen])

    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(
        f"wrote {target} ({size / 1e6:.2f} MB): {dataset.total_episodes} episodes, "
        f"{dataset.total_steps} steps, returns {returns[chosen].min():.0f}..{returns[chosen].max():.0f}"
    )


if __name__ == "__main__":
    main()

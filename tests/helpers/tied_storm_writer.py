"""A training loop of the library's own (no runner) for the kill storm: a tied-weight model with an
EMA copy, an async save after every optimizer step, keep-last 3, resume on start.

Usage: tied_storm_writer.py CHECKPOINT_DIR
Prints "resumed <path> step <S>" or "fresh", then "saved step <S> model <sum> ema <sum>" lines
(the float64 sums of the model's and the EMA's embedding at that save); runs until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402
from torch import nn  # noqa: E402

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, parse_interval  # noqa: E402
from tests.helpers.tied_model import TiedLM  # noqa: E402


def main(directory: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = TiedLM(vocab=512, dim=256)
    ema = ModelEmaV3(model, decay=0.9)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    policy = CheckpointPolicy(interval=parse_interval("1st"), filename="step_{step}.pth", keep_last_n=3,
                              async_save=True)
    manager = CheckpointManager(directory, policy)
    resumed = manager.resume(model=model, optimizer=optimizer, ema=ema)
    step = resumed.progress["step"] if resumed else 0
    print(f"resumed {resumed.path} step {step}" if resumed else "fresh", flush=True)
    while True:
        tokens = torch.randint(0, 512, (32, 16))
        loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model)
        step += 1
        manager.save(epoch=0, step=step, end_of_epoch=False, model=model, optimizer=optimizer, ema=ema)
        # What the file for this step must hold (exact float64 sums), for the test to compare.
        sums = [t.detach().double().sum().item() for t in (model.embed.weight, ema.module.embed.weight)]
        print(f"saved step {step} model {sums[0]!r} ema {sums[1]!r}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

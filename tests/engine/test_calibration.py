"""Temperature scaling: the fit finds the temperature the data was drawn with, lowers the calibration
error, leaves top-1 alone, and its file is read back strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from linnaeus.engine.calibration import TemperatureFit, TemperatureScaled, read_temperatures, write_temperatures
from linnaeus.engine.evaluator import evaluate
from linnaeus.engine.loss import IGNORE_INDEX


def _drawn(n: int, classes: int, temperature: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits, and labels drawn from softmax(logits / temperature): the logits are that temperature off."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, classes, generator=g)
    labels = torch.multinomial((logits / temperature).softmax(dim=1), 1, generator=g)[:, 0]
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_the_fit_recovers_the_temperature_the_labels_were_drawn_with(true_t: float) -> None:
    fit = TemperatureFit(["species", "genus"])
    for seed in range(8):  # batch by batch, as evaluate feeds it
        logits, labels = _drawn(4000, 12, true_t, seed)
        genus = torch.full_like(labels, IGNORE_INDEX)  # no genus known: stays at 1.0
        fit({"species": logits, "genus": logits[:, :3]}, logits.argmax(1, keepdim=True), torch.stack([labels, genus], 1))
    found = fit.solve()
    assert found["species"] == pytest.approx(true_t, rel=0.04)
    assert found["genus"] == 1.0


class _Fixed(torch.nn.Module):
    """A 'model' whose logits are given per image (the image tensor is its index)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"species": self.logits[x.long()]}


def test_scaled_logits_keep_top1_and_lower_the_calibration_error() -> None:
    logits, labels = _drawn(6000, 10, 2.0, seed=3)  # over-confident by a factor 2
    loader = [(torch.arange(i, i + 500), labels[i:i + 500, None]) for i in range(0, 6000, 500)]
    model = _Fixed(logits)
    fit = TemperatureFit(["species"])
    before = evaluate(model, loader, ["species"], torch.device("cpu"), on_batch=fit)
    temperatures = fit.solve()
    after = evaluate(TemperatureScaled(model, temperatures), loader, ["species"], torch.device("cpu"))
    assert after["val/acc1/species"] == before["val/acc1/species"]
    assert after["val/ece/species"] < before["val/ece/species"] / 3
    assert after["val/loss/species"] < before["val/loss/species"]


def test_temperature_file_round_trip_and_refusals(tmp_path: Path) -> None:
    path = write_temperatures(tmp_path / "temperature.json", {"species": 1.7, "genus": 1.2}, checkpoint="x.pth")
    assert read_temperatures(path, ["species", "genus", "family"]) == {"species": 1.7, "genus": 1.2}
    with pytest.raises(ValueError, match="not ranks of this model"):
        read_temperatures(path, ["species"])
    (tmp_path / "bad.json").write_text(json.dumps({"temperatures": {"species": 0}}))
    with pytest.raises(ValueError, match="positive and finite"):
        read_temperatures(tmp_path / "bad.json", ["species"])
    (tmp_path / "other.json").write_text(json.dumps({"thresholds": {}}))
    with pytest.raises(ValueError, match="other.json: expected the temperature.json"):
        read_temperatures(tmp_path / "other.json", ["species"])

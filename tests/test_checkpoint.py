import pytest
import torch

from mtml_lib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mtml_lib.models import MLP


def test_roundtrip_restores_parameters_and_extra(tmp_path):
    torch.manual_seed(0)
    a, b = MLP([2, 8, 1]), MLP([2, 8, 1])
    save_checkpoint(tmp_path / "m.pt", a, extra={"step": 12})
    payload = load_checkpoint(tmp_path / "m.pt", b)
    assert payload["extra"] == {"step": 12}
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not (tmp_path / "m.pt.tmp").exists()


def test_a_checkpoint_saved_during_a_run_carries_its_provenance_and_loads(tmp_path, monkeypatch):
    from mtml_lib import config

    monkeypatch.setattr(config, "_CURRENT", config.current_run())  # the run started below ends with the test
    config.setup("01_math_model", "smoke", "cpu", seed=3, verbose=False)
    save_checkpoint(tmp_path / "m.pt", MLP([2, 8, 1]))
    provenance = load_checkpoint(tmp_path / "m.pt", MLP([2, 8, 1]))["provenance"]  # loads with weights_only
    assert provenance["notebook"] == "01_math_model" and provenance["seed"] == 3
    assert provenance["torch"] == torch.__version__ and type(provenance["torch"]) is str


def test_truncated_file_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", MLP([2, 8, 1]))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_tampered_tensor_fails_integrity_check(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", MLP([2, 8, 1]))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["0.weight"][0, 0] += 1.0
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="integrity"):
        load_checkpoint(path)


def test_wrong_model_and_wrong_format_and_missing(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", MLP([2, 8, 1]))
    with pytest.raises(CheckpointError, match=r"does not fit.*shape differs for .*0.weight \(8, 2\) vs \(16, 2\)"):
        load_checkpoint(path, MLP([2, 16, 1]))
    with pytest.raises(CheckpointError, match=r"missing \['4.bias', '4.weight'\]"):
        load_checkpoint(path, MLP([2, 8, 8, 1]))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="format None"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")

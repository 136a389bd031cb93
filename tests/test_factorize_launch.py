"""The factorized FFN's measured launch table (compress/factorize/launch.py): stored per GPU name, read back
for that GPU only, defaults elsewhere."""
import torch

from compress.factorize import launch


def test_stored_entry_is_read_for_its_gpu_only(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "TABLE", tmp_path / "launch_settings.json")
    launch._stored.cache_clear()
    entry = {"decode_few": {"split": 4}, "decode_many": {"up_n": 64}, "blocked_small": {"block_t": 32},
             "blocked_large": {"block_t": 128}, "bounds": {"few": 2, "decode": 8, "small": 512, "blocked": 2048}}
    launch.store("Fake GPU", entry)
    launch.store("Other GPU", {"bounds": {"blocked": 1}})  # a second GPU keeps the first one's entry
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    assert launch.bounds(cuda) == entry["bounds"]
    assert launch.decode_launch(2, cuda) == {"split": 4} and launch.decode_launch(3, cuda) == {"up_n": 64}
    assert launch.blocked_launch(512, cuda) == {"block_t": 32} and launch.blocked_launch(513, cuda) == {"block_t": 128}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Unmeasured GPU")
    assert launch.bounds(cuda) == launch.DEFAULT_BOUNDS and launch.blocked_launch(100, cuda) == {}
    assert launch.decode_launch(8, cuda) == {"split": 1}  # the kernels' own rule: no split beyond a few tokens
    assert launch.bounds(torch.device("cpu")) == launch.DEFAULT_BOUNDS
    launch._stored.cache_clear()

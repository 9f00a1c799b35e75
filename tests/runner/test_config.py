"""Settings from flags and environment: flags win, the token may come from a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.runner.config import Backoff, load_settings
from services.runner.errors import ConfigError

ENV = {
    "RUNNER_SCHEDULER": "sched:1",
    "RUNNER_STORAGE": "store:2",
    "COMFYUI_URL": "http://gpu-1:8188/",
    "RUNNER_TAGS": "gpu, a100,,gpu",
    "RUNNER_SLOTS": "2",
    "RUNNER_NAME": "env-name",
    "RUNNER_TOKEN": "env-token",
}


def test_everything_from_the_environment() -> None:
    s = load_settings([], ENV)
    assert (s.scheduler, s.storage, s.comfyui_url) == ("sched:1", "store:2", "http://gpu-1:8188")
    assert (s.tags, s.slots, s.name, s.token) == (("gpu", "a100"), 2, "env-name", "env-token")
    assert (s.comfyui_down_timeout_s, s.comfyui_unready_after_s) == (60.0, 5.0)
    assert load_settings([], {**ENV, "RUNNER_COMFYUI_UNREADY_AFTER": "2.5"}).comfyui_unready_after_s == 2.5
    assert load_settings(["--comfyui-unready-after", "9"], ENV).comfyui_unready_after_s == 9.0


def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    s = load_settings(
        ["--scheduler", "x:9", "--tags", "b", "--slots", "3", "--name", "n", "--token-file", str(token_file)],
        ENV,
    )
    assert (s.scheduler, s.tags, s.slots, s.name, s.token) == ("x:9", ("b",), 3, "n", "file-token")
    assert load_settings(["--token", "flag"], ENV).token == "flag"


def test_token_file_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("  secret  ")
    assert load_settings([], {"RUNNER_TOKEN_FILE": str(tmp_path / "t")}).token == "secret"


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no token
        ["--token", "t", "--slots", "0"],
        ["--token", "t", "--slots", "two"],
        ["--token", "t", "--comfyui-url", "gpu:8188"],
        ["--token", "t", "--comfyui-down-timeout", "-1"],
        ["--token-file", "/nonexistent/token"],
    ],
)
def test_bad_settings_are_refused(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        load_settings(argv, {})


def test_backoff_is_capped_and_jittered() -> None:
    b = Backoff(base_s=0.5, cap_s=30.0)
    assert [b.delay(n, 1.0) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert b.delay(3, 0.0) == 0.0
    assert b.delay(10_000, 0.5) == 15.0


def test_pool_mode_from_the_flag_or_the_environment() -> None:
    assert load_settings([], ENV).pool is False
    assert load_settings(["--pool"], ENV).pool is True
    assert load_settings([], {**ENV, "RUNNER_POOL": "1"}).pool is True


def test_comfyuis_folder_must_be_a_directory_and_one_comfyuis(tmp_path: Path) -> None:
    assert load_settings([], ENV).comfyui_dir == ""
    assert load_settings(["--comfyui-dir", str(tmp_path)], ENV).comfyui_dir == str(tmp_path)
    assert load_settings([], {**ENV, "RUNNER_COMFYUI_DIR": str(tmp_path)}).comfyui_dir == str(tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        load_settings(["--comfyui-dir", str(tmp_path / "missing")], ENV)
    with pytest.raises(ConfigError, match="pool"):
        load_settings(["--comfyui-dir", str(tmp_path), "--pool"], ENV)

"""The weights manifest, cache and fetch (offline: a local HTTP server), and no silent random frozen network."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import socket
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from t2i import weights
from t2i.cli import app
from t2i.registry import get_registry

PAYLOAD = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
OTHER = b"something else entirely" * 50


class _Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` by path, honours ``Range: bytes=N-``, and counts what it was asked."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.requests: list[tuple[str, str | None]] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        server: _Server = self.server  # type: ignore[assignment]
        rng = self.headers.get("Range")
        server.requests.append((self.path, rng))
        body = server.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
        if start >= len(body) and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.end_headers()
            return
        part = body[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        self.wfile.write(part)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def server():
    srv = _Server({"good.pth": PAYLOAD, "bad.pth": OTHER, "unknown.bin": OTHER})
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """A temporary manifest and cache folder, network allowed (towards 127.0.0.1 only)."""
    cache = tmp_path / "cache"
    manifest = tmp_path / "manifest.toml"
    dead = f"http://127.0.0.1:{_closed_port()}/good.pth"
    manifest.write_text(
        f"""
[good]
file = "good.pth"
used_by = "a test"
urls = ["{server.url("good.pth")}"]
sha256 = "{DIGEST}"
size = {len(PAYLOAD)}
licence = "CC0"

[corrupt]
file = "corrupt.pth"
used_by = "a test"
urls = ["{server.url("bad.pth")}"]
sha256 = "{DIGEST}"

[prefixed]
file = "prefixed-{DIGEST[:8]}.pth"
used_by = "a test"
urls = ["{server.url("good.pth")}"]
sha256_prefix = "{DIGEST[:8]}"

[offline]
file = "offline.pth"
used_by = "a test"
urls = ["{dead}"]
sha256 = "{DIGEST}"

[drive]
file = "released.pth"
used_by = "a test"
urls = ["https://drive.google.com/open?id=XYZ"]
sha256 = ""
manual = true

[nodigest]
file = "unknown.bin"
used_by = "a test"
urls = ["{server.url("unknown.bin")}"]
sha256 = ""
"""
    )
    monkeypatch.setenv("T2I_WEIGHTS_MANIFEST", str(manifest))
    monkeypatch.setenv("T2I_WEIGHTS", str(cache))
    monkeypatch.delenv("T2I_OFFLINE", raising=False)
    return cache


def _cli(*args: str):
    result = CliRunner().invoke(app, ["weights", *args])
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


# -- fetch / verify ----------------------------------------------------------------------------------------------------
def test_fetch_then_verify(env, server):
    result, text = _cli("fetch", "good")
    assert result.exit_code == 0, text
    assert (env / "good.pth").read_bytes() == PAYLOAD
    assert not list(env.glob("*.partial"))
    assert weights.verify(weights.entry("good")) == ("ok", DIGEST)
    result, text = _cli("verify", "good")
    assert result.exit_code == 0 and DIGEST in text
    result, text = _cli("fetch", "good")  # already there: nothing is downloaded again
    assert result.exit_code == 0 and "already in" in text
    assert server.requests == [("/good.pth", None)]


def test_mismatch_is_refused_and_leaves_nothing(env):
    result, text = _cli("fetch", "corrupt")
    assert result.exit_code == 1
    assert hashlib.sha256(OTHER).hexdigest() in text and DIGEST in text and "Refused" in text
    assert list(env.iterdir()) == []  # neither corrupt.pth nor corrupt.pth.partial


def test_resume_sends_a_range_request(env, server):
    env.mkdir()
    (env / "good.pth.partial").write_bytes(PAYLOAD[:4000])
    path = weights.fetch(weights.entry("good"), progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/good.pth", "bytes=4000-")]
    assert not (env / "good.pth.partial").exists()


def test_offline_error_names_file_url_hash_and_folder(env):
    e = weights.entry("offline")
    with pytest.raises(weights.WeightsUnavailableError) as info:
        weights.fetch(e, progress=False)
    message = str(info.value)
    assert "offline.pth" in message and e.urls[0] in message and DIGEST in message and str(env) in message
    assert getattr(type(info.value), "t2i_user_error", False)
    result, text = _cli("fetch", "offline")
    assert result.exit_code == 1 and e.urls[0] in text


def test_t2i_offline_forbids_any_request(env, server, monkeypatch):
    monkeypatch.setenv("T2I_OFFLINE", "1")
    with pytest.raises(weights.WeightsUnavailableError, match="T2I_OFFLINE"):
        weights.ensure(weights.entry("good"))
    assert server.requests == []


def test_mirror_url_and_local_file_are_checked(env, server, tmp_path):
    result, text = _cli("fetch", "good", "--url", server.url("bad.pth"))
    assert result.exit_code == 1 and not (env / "good.pth").exists()
    result, text = _cli("fetch", "good", "--url", server.url("good.pth"))
    assert result.exit_code == 0, text
    (env / "good.pth").unlink()
    local = tmp_path / "downloaded.pth"
    local.write_bytes(PAYLOAD)
    result, text = _cli("fetch", "good", "--file", str(local))
    assert result.exit_code == 0, text
    assert (env / "good.pth").read_bytes() == PAYLOAD


def test_prefix_only_entries_verify_the_prefix(env):
    weights.fetch(weights.entry("prefixed"), progress=False)
    assert weights.verify(weights.entry("prefixed"))[0] == "ok-prefix"
    result, text = _cli("verify", "prefixed")
    assert result.exit_code == 0 and "prefix" in text


def test_unknown_digest_needs_trust(env):
    digest = hashlib.sha256(OTHER).hexdigest()
    result, text = _cli("fetch", "nodigest")
    assert result.exit_code == 1 and digest in text and "--trust" in text
    assert not (env / "unknown.bin").exists()
    result, text = _cli("fetch", "nodigest", "--trust")
    assert result.exit_code == 0, text
    assert weights.verify(weights.entry("nodigest")) == ("trusted", digest)


def test_manual_entry_prints_the_steps(env, tmp_path):
    result, text = _cli("fetch", "drive")
    assert result.exit_code == 1
    assert "https://drive.google.com/open?id=XYZ" in text and "released.pth" in text
    assert "t2i weights fetch drive --file" in text and "t2i weights verify drive" in text
    # placed by hand in the cache folder: verify prints its digest and accepts it only with --trust
    env.mkdir()
    (env / "released.pth").write_bytes(OTHER)
    result, text = _cli("verify", "drive")
    assert result.exit_code == 1 and hashlib.sha256(OTHER).hexdigest() in text
    result, text = _cli("verify", "drive", "--trust")
    assert result.exit_code == 0 and "trusted" in text


def test_list_shows_cache_state(env):
    weights.fetch(weights.entry("good"), progress=False)
    env.joinpath("corrupt.pth").write_bytes(OTHER)
    result = CliRunner().invoke(app, ["weights", "list"])
    assert result.exit_code == 0, result.output
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in result.output.splitlines() if line.startswith("│")]
    rows = {c[0]: c for c in cells if c[0]}  # a row's first line: name, ..., size, SHA-256, source, in cache, verified
    assert set(rows) == {"good", "corrupt", "prefixed", "offline", "drive", "nodigest"}
    assert rows["good"][2:] == ["10.0 KiB", DIGEST[:8] + "…", "fetch", "yes", "yes"]
    assert rows["corrupt"][-2:] == ["yes", "MISMATCH"]
    assert rows["drive"][-4:] == ["unknown", "manual", "no", "-"]
    assert rows["prefixed"][3] == f"{DIGEST[:8]} (prefix)"
    assert str(env) in result.output and "only the 8-digit prefix" in result.output


def test_packaged_manifest_entries():
    manifest = weights.load_manifest(weights.PACKAGED_MANIFEST)
    expected = {"inception_v3_imagenet", "fid_inception", "is_inception", "resnet152_imagenet"}
    expected |= {f"{what}_{data}" for what in ("damsm", "attngan", "dmgan", "fid_stats") for data in ("bird", "coco")}
    assert set(manifest) == expected
    for e in manifest.values():
        assert e.urls and e.licence and e.used_by
        assert e.manual == ("drive.google.com" in e.urls[0])
        assert len(e.sha256) in (0, 64) and (e.sha256 or e.sha256_prefix or e.manual)


# -- components: names, paths, "random", unset ------------------------------------------------------------------------
def test_a_name_is_fetched_on_first_use(env, caplog):
    with caplog.at_level(logging.WARNING, logger="t2i.weights"):
        path = weights.resolve("good", param="model.x.weights", what="test trunk", suggest="good")
    assert path == env / "good.pth" and path.read_bytes() == PAYLOAD
    assert "fetching weights good" in caplog.text
    with pytest.raises(weights.WeightsError, match="Did you mean good"):
        weights.resolve("goud", param="model.x.weights", what="test trunk", suggest="good")


def _published(recipe_name: str, *sets: str):
    from t2i import recipe

    return recipe.load(recipe_name, list(sets))


def test_published_recipe_without_trunk_weights_is_refused():
    from t2i.networks import build_captioner, build_image_encoder

    unset = _published("dmgan_bird", 'model.image_encoder={name="damsm_inception", align_corners=true}')
    with pytest.raises(weights.WeightsError) as info, torch.device("meta"):
        build_image_encoder(unset)
    assert "model.image_encoder.weights is not set" in str(info.value) and "inception_v3_imagenet" in str(info.value)

    unset = _published("mirrorgan_bird", 'model.captioner={name="stream", backbone="resnet152"}')
    with pytest.raises(weights.WeightsError) as info, torch.device("meta"):
        build_captioner(unset, 10)
    assert "model.captioner.weights is not set" in str(info.value) and "resnet152_imagenet" in str(info.value)


def test_published_recipes_name_their_trunk_weights():
    for name in ("dmgan_bird", "attngan_bird", "dmgan_coco", "attngan_coco", "mirrorgan_bird", "dmmgan_bird"):
        model = _published(name).model
        assert model.image_encoder.params.weights == "inception_v3_imagenet", name
        if model.captioner is not None:
            assert model.captioner.params.weights == "resnet152_imagenet", name


def test_random_is_explicit_logged_and_recorded(tmp_path, caplog):
    from t2i.networks import build_image_encoder
    from t2i.train import run_dir

    recipe = _published("dmgan_bird", 'model.image_encoder.weights="random"', 'train.pretrained.text_encoder="random"')
    with caplog.at_level(logging.WARNING, logger="t2i.weights"), torch.device("meta"):
        encoder = build_image_encoder(recipe)
    assert encoder.pretrained is False
    assert 'model.image_encoder.weights = "random"' in caplog.text
    env = json.loads((run_dir.create(recipe, tmp_path).path / "env.json").read_text())
    assert env["random_weights"] == {"model.image_encoder.weights": "random", "train.pretrained.text_encoder": "random"}


def test_a_checkpoint_load_needs_no_trunk_file(monkeypatch):
    """The published recipe's encoder, rebuilt to receive a checkpoint's whole state, fetches nothing."""
    from t2i.networks import build_role

    monkeypatch.setenv("T2I_WEIGHTS", "/nonexistent/t2i-weights")
    with torch.device("meta"):
        encoder = build_role(_published("dmgan_bird"), "image_encoder", 10, from_checkpoint=True)
    assert sum(p.numel() for p in encoder.parameters()) > 20_000_000


def test_missing_path_still_names_the_path(tmp_path):
    missing = tmp_path / "inception.pth"
    with pytest.raises(FileNotFoundError, match="inception_v3_imagenet"):
        get_registry("image_encoder").build("damsm_inception.v1", {"weights": str(missing)}, text_dim=8)


def test_metric_backbone_fetches_into_the_weights_folder(env, monkeypatch, tmp_path, server):
    """A backbone's manifest entry is fetched into the metric's weights folder (here a stand-in manifest)."""
    from t2i.metrics import backbones

    folder = tmp_path / "metric-weights"
    spec = backbones.WeightSpec("good.pth", DIGEST, server.url("good.pth"), "test backbone", manifest_name="good")
    path, digest = backbones._find_or_random(spec, folder, allow_random=False)
    assert path == folder / "good.pth" and digest == DIGEST
    assert Path(path).read_bytes() == PAYLOAD

"""Dependency invariants, checked with `cargo tree` (offline, from Cargo.lock):
router and worker ship without the test kit or a hyper server of their own,
and the binary links the test kit only with `--features bench`. Plus what a
shipped (bench-less) binary says when asked for `spindle bench`."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import BIN, ROOT

TESTKIT = "spindle-testkit"
CARGO = shutil.which("cargo")
needs_cargo = pytest.mark.skipif(CARGO is None, reason="cargo is not installed")


def tree(package: str, *args: str) -> list[str]:
    """`cargo tree` lines of the package's normal (shipped) dependencies: `name vX`."""
    out = subprocess.run(
        [CARGO or "cargo", "tree", "--offline", "--locked", "-p", package, "-e", "normal",
         "--prefix", "none", "-f", "{p}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    return [line.split(" (")[0].strip() for line in out.splitlines() if line.strip()]


def names(lines: list[str]) -> set[str]:
    return {line.split(" ")[0] for line in lines}


@needs_cargo
@pytest.mark.parametrize("package", ["spindle-router", "spindle-worker"])
def test_shipped_crates_do_not_depend_on_the_test_kit(package):
    assert TESTKIT not in names(tree(package))
    # The fake worker was the router's only reason for a hyper server: hyper
    # (and hyper-util) may come through axum/reqwest, never directly.
    direct = names(tree(package, "--depth", "1"))
    assert not direct & {"hyper", "hyper-util", TESTKIT}, direct


@needs_cargo
def test_binary_links_the_test_kit_only_with_the_bench_feature():
    assert TESTKIT not in names(tree("spindle"))
    assert TESTKIT in names(tree("spindle", "--features", "bench"))


def test_bench_without_the_feature_says_how_to_build_it():
    assert BIN.exists(), f"{BIN} is missing: run scripts/test (it builds the release binary)"
    help_text = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "bench" in help_text and "--features bench" in help_text
    r = subprocess.run([str(BIN), "bench", "streams", "--url", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r
    assert "--features bench" in r.stderr, r.stderr


@needs_cargo
def test_router_depends_on_proto_only():
    # The router builds and tests without llama.cpp: of the workspace, only proto.
    deps = names(tree("spindle-router"))
    assert "spindle-proto" in deps
    assert not deps & {"spindle-worker", "llama-cpp-2", "llama-cpp-sys-2"}, deps


def rust_sources(*dirs: str) -> dict[str, str]:
    """Source text of every `.rs` file under the given repo directories, without
    `#[cfg(test)]` modules (tests may build anything)."""
    out = {}
    for d in dirs:
        for path in sorted((ROOT / d).rglob("*.rs")):
            text = path.read_text()
            out[str(path.relative_to(ROOT))] = text.split("#[cfg(test)]")[0]
    return out


def test_only_the_responses_module_builds_stream_events():
    users = [p for p, text in rust_sources("router/src", "src", "testkit/src").items()
             if "ResponseStreamEvent" in text]
    assert users and all(p.startswith("router/src/responses/") for p in users), users


def test_the_store_stores_bytes_and_never_reads_api_events():
    # The store keeps event bytes with their numbers; what they mean is the
    # API layer's (the reaper gets its terminal events from responses::lost).
    for path, text in rust_sources("router/src/store").items():
        for word in ("ResponseStreamEvent", "responses::", "\"response.failed\"", "\"type\""):
            assert word not in text, f"{path} names {word}"


def test_the_routing_key_is_computed_in_one_place():
    for path, text in rust_sources("router/src", "src").items():
        if path == "router/src/cluster/key.rs":
            continue
        assert "cache_key_from(" not in text, path
        # The API layer assigns the key (assign_routing_key); the balancer
        # only reads it back (routing_key).
        if path != "router/src/cluster/balancer.rs":
            assert "routing_key(" not in text.replace("assign_routing_key(", ""), path

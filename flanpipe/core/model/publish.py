"""Publishing a trained model to the Hugging Face Hub: ``flanpipe publish --model models/nli --repo
me/flanpipe-nli [--dry-run]``.

The model folder's ``hf/`` (the checkpoint ``transformers`` loads, its card ``README.md`` refreshed
first: :func:`flanpipe.core.model.card.write_card`) goes to the repository's root, and ``adapter/``
(a LoRA run's ``peft`` adapter) to its ``adapter/`` folder, with ``huggingface_hub``'s
``upload_folder``. ``--dry-run`` lists the files and their sizes and uploads nothing. Without a
network (``HF_HUB_OFFLINE``, or the Hub unreachable) or without a token, it fails at once, naming
why, before any weights are read. Publishing is never part of the workflow's ``all``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FOLDERS = {"hf": ".", "adapter": "adapter"}
"""The model folder's subfolders that are published, and where in the repository."""


class PublishError(RuntimeError):
    """The model cannot be published: no network, no token, no such model folder."""


@dataclass(frozen=True)
class Upload:
    """One file to upload: its path here, its path in the repository, its size in bytes."""

    path: Path
    path_in_repo: str
    size: int


def planned_uploads(model_dir: str | Path) -> list[Upload]:
    """The files ``publish`` uploads from ``model_dir`` (``models/<name>``), sizes from the file
    system (no file is read)."""
    model_dir = Path(model_dir)
    if not (model_dir / "hf" / "config.json").is_file():
        raise PublishError(f"{model_dir}: no exported model (hf/config.json); train it first "
                           f"(snakemake models/{model_dir.name}/hf)")
    uploads = []
    for folder, target in FOLDERS.items():
        root = model_dir / folder
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
            relative = path.relative_to(root).as_posix()
            in_repo = relative if target == "." else f"{target}/{relative}"
            uploads.append(Upload(path, in_repo, path.stat().st_size))
    return uploads


def check_can_publish(endpoint_check: bool = True) -> str:
    """The Hub user a token publishes as; raises :class:`PublishError`, naming why, where there is no
    network (``HF_HUB_OFFLINE``, or the Hub does not answer) or no token (``HF_TOKEN``, or ``hf auth
    login``)."""
    from huggingface_hub import HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise PublishError("publish: HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it on a "
                           "machine with network (--dry-run lists the files without it)")
    token = get_token()
    if token is None:
        raise PublishError("publish: no Hugging Face token; set HF_TOKEN or run `hf auth login` "
                           "(--dry-run lists the files without one)")
    if not endpoint_check:
        return ""
    try:
        return HfApi().whoami(token=token)["name"]
    except Exception as err:  # network errors and a rejected token both land here
        raise PublishError(f"publish: the Hub at {constants.ENDPOINT} did not accept the token or could not "
                           f"be reached ({type(err).__name__}: {err})") from None


def publish(model_dir: str | Path, repo: str, dry_run: bool = False, private: bool = False) -> list[Upload]:
    """Upload ``model_dir``'s ``hf/`` (and ``adapter/``) to the Hub repository ``repo``
    (``user/name``, created if need be); with ``dry_run``, only list what would go. Returns the
    uploads."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise PublishError(f"publish: --repo {repo!r} is not a Hub repository id; allowed: user/name")
    uploads = planned_uploads(model_dir)
    if dry_run:
        return uploads
    check_can_publish()
    from huggingface_hub import HfApi

    from flanpipe.core.model.card import write_card

    model_dir = Path(model_dir)
    write_card(model_dir)  # the held-out table as the evaluation now stands
    api = HfApi()
    api.create_repo(repo, private=private, exist_ok=True)
    for folder, target in FOLDERS.items():
        if (model_dir / folder).is_dir():
            api.upload_folder(folder_path=str(model_dir / folder), repo_id=repo,
                              path_in_repo=None if target == "." else target,
                              commit_message=f"flanpipe publish: {model_dir.name} {folder}/")
    return planned_uploads(model_dir)


def human_size(size: int) -> str:
    """Bytes for people.

    >>> human_size(512), human_size(1536), human_size(3 * 2**30)
    ('512 B', '1.5 KiB', '3.0 GiB')
    """
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"

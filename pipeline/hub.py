"""`adpa push-to-hub RUN REPO`: a finished run's student to a Hugging Face Hub model repository.

One commit holds the run's `model/` (weights, tokenizer, chat template and the model card, whose YAML
metadata and provenance the hub shows) at the repository's root and, for a LoRA run, `adapter/` beside
it. The endpoint is `HF_ENDPOINT` (default the public hub) and the token `HF_TOKEN` or a saved
`hf auth login`, as every huggingface_hub tool reads them.
"""

from __future__ import annotations

from pathlib import Path

from adpa.stages.common.run_folder import owner_of

REQUIRED = ("config.json", "README.md")  # a run's model/ always has these (and weights: *.safetensors)


class PushRefused(ValueError):
    pass


def files_to_push(run: Path) -> list[tuple[str, Path]]:
    """(path in the repository, file) for the run folder's student; refused in one line when `run` is not
    the folder of a finished run."""
    run = Path(run)
    model = run / "model"
    owner = owner_of(run)
    if owner is None or not owner.startswith("student-"):
        raise PushRefused(f"{run} is not a distill run folder (no .adpa-run.json naming a student)")
    missing = [n for n in REQUIRED if not (model / n).is_file()]
    if missing or not any(model.glob("*.safetensors")):
        raise PushRefused(f"{run}: the run has not finished (model/ lacks {', '.join(missing) or '*.safetensors'})")
    return _files(model, "") + (_files(run / "adapter", "adapter/") if (run / "adapter").is_dir() else [])


def _files(folder: Path, prefix: str) -> list[tuple[str, Path]]:
    return [(prefix + p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*")) if p.is_file()]


def push(run: Path, repo: str, private: bool = False, token: str | None = None):
    """Create `repo` (or use it) and commit the run's student in one commit; returns the hub's CommitInfo."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise PushRefused(f"repository {repo!r}: {str(e).splitlines()[0]}") from None
    ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(p)) for name, p in files_to_push(run)]
    api = HfApi(token=token)
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    return api.create_commit(repo, ops, commit_message=f"adpa student {owner_of(Path(run))}", repo_type="model")

"""Share a run: ``jd.export_dataset`` writes its curated pairs, ``jd.push_to_hub`` uploads them.

The exported rows are what the run trained on (its pairs after judging and review) with the
scores, the human decisions and, per row, where the chosen answer came from; the dataset card
carries the run's rights ledger, so the terms the texts were made under travel with them. The
folder is laid out as the Hugging Face Hub reads a dataset repository, and the data file is
accepted back by ``jd.distill(dataset=...)`` as already-made pairs (no teacher call).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from jupyter_distill.core import curated
from jupyter_distill.core.errors import DistillError, ExportError
from jupyter_distill.export.card import dataset_hash, travelling_ledger
from jupyter_distill.export.dataset import check_format, write_dataset
from jupyter_distill.judging.review import Decision, replay
from jupyter_distill.pipeline.audit import audit
from jupyter_distill.pipeline.runref import RunRef, resolve_run

#: Environment variable ``push_to_hub`` (through ``huggingface_hub``) reads the token from.
TOKEN_ENV = "HF_TOKEN"


def _iso(seconds: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)) if seconds else None


def _human_decision(decision: Decision | None, key: str | None, recorded: Any) -> str | None:
    if decision is not None and key:
        if key in decision.edits:
            return "edited"
        if key == decision.best:
            return "best"
        if key in decision.accepted:
            return "accepted"
    return str(recorded) if recorded else None  # an imported pair keeps the decision it arrived with


def curated_rows(ref: RunRef) -> tuple[list[dict[str, Any]], str | None]:
    """``(rows, judge id)``: one row per training pair of the run, in prompt order."""
    store, run_id = ref.store, ref.run_id
    prompts = {p.hash: p for p in store.get_prompts(run_id)}
    pairs = store.get_pairs(run_id)
    keys = [k for p in pairs for k in (p.chosen_key, p.rejected_key) if k]
    samples = store.get_samples(keys)
    judge = ref.summary.get("judge")
    judge = str(judge) if judge else None
    scores: dict[str, float | None] = {}
    for j in store.judgments_for_samples(keys, judge=judge):
        if j.status == "ok":
            scores[j.sample_key] = j.score
    decisions = replay(store.get_reviews(run_id))
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        prompt = prompts.get(pair.prompt_hash)
        if prompt is None:
            continue
        sample = samples.get(pair.chosen_key or "")
        prov = sample.provenance if sample is not None else {}
        policy = prov.get("policy") or {}
        decision = _human_decision(decisions.get(prompt.hash), pair.chosen_key, prov.get("human_decision"))
        row: dict[str, Any] = {
            "prompt": prompt.messages,
            "prompt_hash": prompt.hash,
            "chosen": pair.chosen_text,
            "rejected": pair.rejected_text,
            # an edited text was never judged: the score of the candidate before the edit is not its score
            "chosen_score": None if decision == "edited" else scores.get(pair.chosen_key or ""),
            "rejected_score": scores.get(pair.rejected_key or ""),
            "judge": judge or prov.get("judge"),
            "rank": pair.rank,
            "source": pair.source,
            "human_decision": decision,
            "split": "train",
            "teacher": prov.get("teacher") or (sample.teacher if sample is not None else None),
            "provider": prov.get("provider") or policy.get("provider"),
            "endpoint": prov.get("endpoint"),
            "model": prov.get("model") or policy.get("model"),
            "terms_version": prov.get("terms_version") or policy.get("terms_version"),
            "terms_verdict": policy.get("verdict"),
            "authorization": policy.get("authorization"),
            "licence": prov.get("licence") or policy.get("licence"),
            "chosen_sample": prov.get("source_sample") or pair.chosen_key,
            "rejected_sample": pair.rejected_key,
            "sampled_at": prov.get("time") or _iso(sample.created_at if sample is not None else None),
        }
        # the prompt's reference fields (e.g. ``expected``) keep verifiers working on the re-import
        row.update({k: v for k, v in prompt.row.items() if k not in curated.COLUMNS})
        rows.append(row)
    return rows, judge


def export_dataset(run: Any, path: str | Path, format: str = "jsonl", *, workdir: str | Path | None = None) -> Path:
    """Write the run's curated pairs and a dataset card into the folder ``path``; returns the data file.

    ``run``: a run name (looked up in ``workdir``, default the run folder), a ``Run`` or the
    ``Student`` that ``jd.distill`` returned. ``format``: ``"jsonl"`` or ``"parquet"``. The folder
    gets ``README.md`` (front matter the Hub reads: configs/data_files, licence, task categories;
    the counts, the judge and the rights ledger) and ``data/train.<format>``. Pass the returned
    file to ``jd.distill(dataset=...)`` to train on the same pairs without calling a teacher.
    """
    fmt = check_format(format)
    ref = resolve_run(run, workdir)
    rows, judge = curated_rows(ref)
    ledger = audit(ref.run if ref.run is not None else ref.run_id, workdir=None if ref.run else ref.store.workdir)
    travelling = travelling_ledger(
        ledger.to_dict(), run_id=ref.run_id, dataset_hash=dataset_hash(ref.store, ref.run_id)
    )
    counts = {
        "pairs": len(rows),
        "prompts": len({r["prompt_hash"] for r in rows}),
        "pairs_with_rejected": sum(r["rejected"] is not None for r in rows),
        "human_decisions": sum(r["human_decision"] is not None for r in rows),
        "teachers": ", ".join(sorted({str(r["teacher"]) for r in rows if r["teacher"]})) or "not recorded",
        "run": ref.run_id,
    }
    return write_dataset(rows, path, format=fmt, name=ref.run_id, ledger=travelling, judge=judge, counts=counts)


# ---------------------------------------------------------------------------------------- Hub upload
def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return env in ("1", "true", "yes", "on") or (env == "" and bool(constants.HF_HUB_OFFLINE))


def _network_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning "the Hub was not reached": OSError, and the transport errors of the HTTP
    client huggingface_hub uses (``httpx2`` in 2.x, ``httpx`` in 1.x; requests' are OSErrors)."""
    import importlib

    found: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _dataset_folder(source: Path) -> Path:
    """The dataset folder of a path to it, its README.md or its data file."""
    folder = source if source.is_dir() else source.parent
    if folder.name == "data" and (folder.parent / "README.md").is_file():
        folder = folder.parent
    if not (folder / "README.md").is_file() or not (folder / "data").is_dir():
        raise ExportError(
            f"{str(source)!r} is not a dataset folder written by export_dataset (README.md and data/). Fix: pass "
            "the path export_dataset returned, its folder, or the run itself.",
            field="run_or_path",
            value=str(source),
        )
    return folder


def _folders(run_or_path: Any, workdir: str | Path | None) -> tuple[Path, Path | None]:
    """``(dataset folder, model folder or None)`` for a dataset path or a run."""
    if isinstance(run_or_path, str | Path) and Path(run_or_path).expanduser().exists():
        return _dataset_folder(Path(run_or_path).expanduser()), None
    ref = resolve_run(run_or_path, workdir)
    folder = Path(ref.store.workdir) / "runs" / ref.run_id / "dataset"
    data = export_dataset(ref.run if ref.run is not None else ref.run_id, folder, workdir=ref.store.workdir)
    card = ref.store.get_artifacts(ref.run_id).get("model_card")
    model = Path(card["path"]).parent if card and Path(card["path"]).is_file() else None
    return data.parent.parent, model


def push_to_hub(
    run_or_path: Any,
    repo_id: str,
    token: str | None = None,
    *,
    private: bool = False,
    workdir: str | Path | None = None,
) -> dict[str, str]:
    """Upload a run's dataset folder (and its exported model folder) to the Hugging Face Hub.

    ``run_or_path``: a run (name, ``Run`` or ``Student``: its pairs are exported first and its
    export folder with the model card and GGUF files is uploaded as the model repository
    ``repo_id``) or a folder/file ``export_dataset`` wrote (the dataset alone). ``token``
    defaults to ``huggingface_hub``'s own (``HF_TOKEN`` or a stored login). Refused with a
    ``DistillError`` before any upload when there is no token or ``HF_HUB_OFFLINE`` is set, and
    when the Hub cannot be reached. Returns the repository URLs by kind (``dataset``, ``model``).
    """
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise DistillError(
            f"repo_id must be 'owner/name', got {repo_id!r}. Fix: e.g. push_to_hub(run, 'my-org/support-bot').",
            field="repo_id",
            value=repo_id,
        )
    import huggingface_hub
    import huggingface_hub.errors

    token = token or huggingface_hub.get_token()
    if not token:
        raise DistillError(
            "push_to_hub needs a Hugging Face token and found none. Fix: pass token=..., set the "
            f"{TOKEN_ENV} environment variable, or run `hf auth login`.",
            field="token",
            value=None,
        )
    if _offline():
        raise DistillError(
            "push_to_hub cannot upload: HF_HUB_OFFLINE is set, so this machine is offline for the Hub. Fix: unset "
            "HF_HUB_OFFLINE on a machine with network access, or copy the folder there and push it from there.",
            field="HF_HUB_OFFLINE",
            value=os.environ.get("HF_HUB_OFFLINE", "1"),
        )
    dataset, model = _folders(run_or_path, workdir)
    api = huggingface_hub.HfApi(token=token, endpoint=os.environ.get("HF_ENDPOINT") or None)
    uploads = [("dataset", dataset)] + ([("model", model)] if model is not None else [])
    urls: dict[str, str] = {}
    network = _network_errors()
    for kind, folder in uploads:
        try:
            url = api.create_repo(repo_id, repo_type=kind, private=private, exist_ok=True)
            api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type=kind, ignore_patterns=[".*", "**/.*"])
        except huggingface_hub.errors.HfHubHTTPError as exc:
            raise DistillError(
                f"the Hub refused the {kind} upload to {repo_id!r}: {exc}. Fix: check that the token may write to "
                "that namespace.",
                field="repo_id",
                value=repo_id,
            ) from None
        except network as exc:  # connection refused, DNS, TLS: the network, not the request
            raise DistillError(
                f"the Hub cannot be reached ({type(exc).__name__}: {exc}); nothing was uploaded after the {kind} "
                f"repository. Fix: check the network (and HF_ENDPOINT), or push {str(folder)!r} from a machine online.",
                field="network",
                value=str(api.endpoint),
            ) from None
        urls[kind] = str(url)
    return urls


__all__ = ["TOKEN_ENV", "curated_rows", "export_dataset", "push_to_hub"]

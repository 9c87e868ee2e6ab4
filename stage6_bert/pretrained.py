"""Pre-trained weights are data: found, downloaded when missing, and checked like a data set, then read by the
course's own Bert and WordPieceTokenizer (no `transformers` at run time).

    --pretrained all-MiniLM-L6-v2                          a name: <data-dir>/pretrained/all-MiniLM-L6-v2/
    --pretrained sentence-transformers/all-MiniLM-L6-v2    a hub id: <data-dir>/pretrained/all-MiniLM-L6-v2/, downloaded
                                                           there from the Hugging Face hub when missing
    --pretrained path/to/a/folder                          any folder with the files below

    the folder: config.json + model.safetensors (the model, model.py `from_pretrained`)
                + tokenizer.json or vocab.txt (the vocabulary and normalisation, tokenizer.py `WordPieceTokenizer.load`)

Why treat weights like a data set. A checkpoint is a file someone else made, like GLUE's TSVs: it lives in the data
directory (--data-dir, else $MY_LLM_DATA, else ~/.cache/my_llm/data), is fetched once, and is never copied into the
repository. The hub's folder layout is kept as it is, so a folder from `huggingface_hub.snapshot_download`, from
`save_pretrained`, or from a colleague's disk all load the same way. A name the course knows (KNOWN) can be downloaded
by its short name too; any other needs its hub id or a folder.

What this checkpoint is, and what it is not, is written in <folder>/SOURCE.md where the course's data set has one: for
all-MiniLM-L6-v2, a 6-layer, 384-wide BERT with the bert-base-uncased vocabulary, distilled from a larger BERT and then
trained on about a billion sentence pairs to give sentence embeddings. It has a pooler, and neither a masked-LM nor a
next-sentence head: it can be fine-tuned and used as an encoder, not asked to fill in masks.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from scripts.common import UserError, portable
from stage6_bert.model import Bert, from_pretrained
from stage6_bert.tokenizer import WordPieceTokenizer

MODEL_FILES = ("config.json", "model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")   # either; tokenizer.json also holds the normalisation settings
HUB_FILES = [*MODEL_FILES, *TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json"]  # what is downloaded
EXPECTED = "config.json, model.safetensors, and tokenizer.json or vocab.txt"
KNOWN = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}   # short names that can be downloaded
SHORT_NAMES = {"all-MiniLM-L6-v2": "minilm"}   # in run names: glue_sst2_minilm; any other: its folder name, lower case
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")   # owner/name


def locate(spec: str, data_dir: str | Path) -> tuple[Path, str | None]:
    """--pretrained -> (the folder it names, the hub id to download it from, or None). An existing folder wins;
    then "owner/name" is a hub id kept in <data-dir>/pretrained/<name>/; a plain name is <data-dir>/pretrained/<name>/
    (downloadable when KNOWN)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, None
    if HUB_ID.fullmatch(spec):
        return Path(data_dir) / "pretrained" / spec.split("/")[1], spec
    if "/" in spec or "\\" in spec or spec.startswith("."):
        raise UserError(f"pre-trained folder not found: {spec} (a folder with {EXPECTED}; or give a name under "
                        f"{Path(data_dir) / 'pretrained'}, or a hub id such as {KNOWN['all-MiniLM-L6-v2']})")
    return Path(data_dir) / "pretrained" / spec, KNOWN.get(spec)


def short_name(spec: str) -> str:
    """The weights' name in run names and output folders: "sentence-transformers/all-MiniLM-L6-v2" -> "minilm"."""
    name = spec.replace("\\", "/").rstrip("/").split("/")[-1]
    return SHORT_NAMES.get(name, name.lower())


def missing_files(folder: Path) -> list[str]:
    """The files the folder lacks: [] when it is complete."""
    missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    return missing


def download(hub_id: str, folder: Path) -> None:
    """The files of HUB_FILES that the hub repository has, into `folder` (huggingface_hub.snapshot_download)."""
    print(f"pre-trained weights not complete in {folder}; downloading {hub_id} from the Hugging Face hub ...",
          file=sys.stderr)
    import huggingface_hub
    huggingface_hub.logging.set_verbosity_error()   # the one-line error of find_pretrained says what went wrong
    huggingface_hub.snapshot_download(repo_id=hub_id, local_dir=folder, allow_patterns=HUB_FILES)


def find_pretrained(spec: str, data_dir: str | Path) -> Path:
    """The folder of the pre-trained weights `spec` names (see `locate`), downloaded first when it is incomplete and
    a hub id is known. Missing and not downloadable: one line naming the files expected and where."""
    folder, hub_id = locate(spec, data_dir)
    if not missing_files(folder):
        return folder
    where = f"{folder} lacks {', '.join(missing_files(folder))}" if folder.is_dir() else f"{folder} does not exist"
    if hub_id is None:
        raise UserError(f"pre-trained weights {spec!r} not found: {where} (expected {EXPECTED}). Pass a hub id such "
                        f"as {KNOWN['all-MiniLM-L6-v2']} to download them, a folder that has them, or set --data-dir "
                        f"or MY_LLM_DATA to a data directory with pretrained/{folder.name}/.")
    try:
        download(hub_id, folder)
    except Exception as e:  # no internet, no such repository, no huggingface_hub: all end the same way for the user
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"pre-trained weights {spec!r} not found: {where} (expected {EXPECTED}), and downloading "
                        f"{hub_id} failed ({reason}). Set --data-dir or MY_LLM_DATA to a data directory with "
                        f"pretrained/{folder.name}/, pass the folder itself, or run with internet access.") from None
    if missing_files(folder):
        raise UserError(f"downloaded {hub_id} into {folder}, but it lacks {', '.join(missing_files(folder))}: "
                        f"not a BERT checkpoint in the Hugging Face layout (expected {EXPECTED})")
    return folder


def load_tokenizer(folder: Path) -> WordPieceTokenizer:
    """tokenizer.json (vocabulary and normalisation), else vocab.txt with the settings of tokenizer_config.json when
    there is one (do_lower_case, strip_accents, tokenize_chinese_chars; bert-base-uncased's otherwise)."""
    if (folder / "tokenizer.json").is_file():
        return WordPieceTokenizer.load(folder / "tokenizer.json")
    settings = {}
    if (folder / "tokenizer_config.json").is_file():
        import json
        try:
            hc = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {folder / 'tokenizer_config.json'}: {type(e).__name__}: {e}") from None
        names = {"do_lower_case": "lowercase", "strip_accents": "strip_accents",
                 "tokenize_chinese_chars": "handle_chinese_chars"}
        settings = {ours: hc[theirs] for theirs, ours in names.items() if theirs in hc}
    return WordPieceTokenizer.load(folder / "vocab.txt", **settings)


def load_pretrained_bert(spec: str, data_dir: str | Path, kind=Bert, **kwargs):
    """--pretrained -> (our `kind` holding the weights, the tokenizer, a description for result files and
    checkpoints). kwargs go to model.from_pretrained (num_labels, pooling, dropout, ...). Every way the folder can be
    wrong is one line: a missing file, a config our model cannot represent, weights that do not fit their config, a
    vocabulary larger than the model's or whose [PAD] is not the model's."""
    folder = find_pretrained(spec, data_dir)
    tok = load_tokenizer(folder)
    from safetensors import SafetensorError   # a file that is not safetensors: "header too large", ...
    try:
        model, absent = from_pretrained(folder, kind, **kwargs)
    except (OSError, ValueError, TypeError, SafetensorError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{folder}: {reason}" + (" (model.safetensors)" if isinstance(e, SafetensorError) else "")) \
            from None
    if len(tok) > model.cfg.vocab_size or tok.pad_id != model.cfg.pad_id:
        raise UserError(f"{folder}: the tokenizer ({len(tok):,} tokens, [PAD] {tok.pad_id}) does not fit the model "
                        f"(vocab_size {model.cfg.vocab_size:,}, pad_token_id {model.cfg.pad_id})")
    described = {"weights": spec, "folder": portable(str(folder.resolve())), "hub_id": locate(spec, data_dir)[1],
                 "lacks": absent}
    return model, tok, described

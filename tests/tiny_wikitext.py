"""The tiny WikiText data root of the tests, cut from the full files on first use (see tests/assets/README.md).

WikiText is never copied into the repository: :func:`tiny_root` cuts it from ``$LBW_DATA_DIR`` (else
``../shared/data``) into a folder under the system's temporary directory, checks every file against
``tests/assets/tiny_wikitext.sha256``, and reuses that folder while it still matches.

Each file keeps the first whole articles of its source, byte for byte: the cut ends where the full files end
an article (its last paragraph, then one blank line), so every cut file is shaped like the full file and its
lines are a prefix of the source's lines. Valid and test are cut at the same lines in all three copies
(WikiText-2 tokens, WikiText-103 tokens, WikiText-2 raw), which hold the same articles line by line.

    python tests/tiny_wikitext.py --src ../shared/data --dst /tmp/tiny --write-sums   # re-cut, rewrite the sums
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUMS = HERE / "assets" / "tiny_wikitext.sha256"
TRAIN_ARTICLES = 8
EVAL_ARTICLES = 2
# An article starts with a level-1 heading " = Title = " after a blank line (" = = Section = = " are level 2).
HEADING = re.compile(r" = [^=].* = \n")


def read_lines(path: Path) -> list[str]:
    """Physical lines, newline kept; split on "\\n" only, as lbw_env.plant.data does."""
    return [line + "\n" for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


def article_cut(lines: list[str], articles: int) -> int:
    """Number of leading lines holding the first ``articles`` articles (ending with one blank line)."""
    starts = [i for i, line in enumerate(lines) if HEADING.fullmatch(line) and i and lines[i - 1] == " \n"]
    if len(starts) <= articles:
        raise SystemExit(f"only {len(starts)} articles; asked for {articles} and the next one's start")
    # Articles are separated by one or two blank lines; the full files end with one: keep only the first.
    end = starts[articles]
    while lines[end - 1] == " \n":
        end -= 1
    return end + 1


def cut(src: Path, dst: Path) -> list[str]:
    """Write the tiny data root cut from the full root ``src`` into ``dst``; returns ``sha256  name`` lines."""
    cuts = {"train": article_cut(read_lines(src / "wikitext-2/wiki.train.tokens"), TRAIN_ARTICLES)}
    names = ["wikitext-2/wiki.train.tokens"]
    for split in ("valid", "test"):
        cuts[split] = article_cut(read_lines(src / f"wikitext-2/wiki.{split}.tokens"), EVAL_ARTICLES)
        names += [f"wikitext-2/wiki.{split}.tokens", f"wikitext-103/wiki.{split}.tokens"]
        names += [f"wikitext-2-raw/wiki.{split}.raw"]
    sums = []
    for name in names:
        split = name.rsplit("/", 1)[1].split(".")[1]
        lines = read_lines(src / name)[: cuts[split]]
        assert lines[-1] == " \n" and lines[-2] != " \n", f"{name}: the cut does not end an article"
        data = "".join(lines).encode("utf-8")
        out = dst / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
    return sorted(sums, key=lambda s: s.split()[1])


def mismatches(root: Path) -> list[str]:
    """Files of ``root`` that are missing or differ from ``tests/assets/tiny_wikitext.sha256``."""
    bad = []
    for line in SUMS.read_text().splitlines():
        digest, name = line.split()
        path = root / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(name)
    return bad


def source_root() -> Path:
    """The full data root: ``$LBW_DATA_DIR``, else ``../shared/data`` beside the repository (absolute)."""
    return Path(os.environ.get("LBW_DATA_DIR") or HERE.parents[1] / "shared" / "data").resolve()


@functools.cache
def tiny_root() -> Path:
    """The tiny data root, cut from :func:`source_root` once per machine (checked against the sums every time)."""
    key = hashlib.sha256(SUMS.read_bytes()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"lbw-tiny-wikitext-{key}"
    if root.is_dir() and not mismatches(root):
        return root
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    cut(source_root(), tmp)
    bad = mismatches(tmp)
    if bad:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"tiny WikiText cut from {source_root()} differs from {SUMS} in {bad}")
    shutil.rmtree(root, ignore_errors=True)
    try:
        os.replace(tmp, root)  # atomic: a concurrent test process sees no folder or a whole one
    except OSError:  # another process put a complete one there first
        shutil.rmtree(tmp, ignore_errors=True)
        if mismatches(root):
            raise
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="the full data root (wikitext-2/ ...)")
    parser.add_argument("--dst", type=Path, required=True, help="the tiny data root to write (outside the repo)")
    parser.add_argument("--write-sums", action="store_true", help=f"rewrite {SUMS.name} from this cut")
    args = parser.parse_args()
    sums = cut(args.src, args.dst)
    if args.write_sums:
        SUMS.write_text("\n".join(sums) + "\n")
    print("\n".join(sums))


if __name__ == "__main__":
    main()

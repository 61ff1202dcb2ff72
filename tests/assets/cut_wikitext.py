"""Cut the tiny WikiText data root under tests/assets/wikitext/ from the full files (see tests/assets/README.md).

Each file keeps the first whole articles of its source, byte for byte: the cut ends where the full files end
an article (its last paragraph, then one blank line), so every cut file is shaped like the full file and its
lines are a prefix of the source's lines. Valid and test are cut at the same lines in all three copies
(WikiText-2 tokens, WikiText-103 tokens, WikiText-2 raw), which hold the same articles line by line.

    python tests/assets/cut_wikitext.py --src /work/shared/data          # rewrite the assets and SHA256SUMS
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="the full data root (wikitext-2/ ...)")
    parser.add_argument("--dst", type=Path, default=HERE / "wikitext", help="the tiny data root to write")
    args = parser.parse_args()

    cuts = {"train": article_cut(read_lines(args.src / "wikitext-2/wiki.train.tokens"), TRAIN_ARTICLES)}
    names = ["wikitext-2/wiki.train.tokens"]
    for split in ("valid", "test"):
        cuts[split] = article_cut(read_lines(args.src / f"wikitext-2/wiki.{split}.tokens"), EVAL_ARTICLES)
        names += [f"wikitext-2/wiki.{split}.tokens", f"wikitext-103/wiki.{split}.tokens"]
        names += [f"wikitext-2-raw/wiki.{split}.raw"]

    sums = []
    for name in names:
        split = name.rsplit("/", 1)[1].split(".")[1]
        lines = read_lines(args.src / name)[: cuts[split]]
        assert lines[-1] == " \n" and lines[-2] != " \n", f"{name}: the cut does not end an article"
        data = "".join(lines).encode("utf-8")
        out = args.dst / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
        print(f"{name}: {cuts[split]} lines, {len(data):,} bytes")
    (args.dst / "SHA256SUMS").write_text("\n".join(sorted(sums, key=lambda s: s.split()[1])) + "\n")


if __name__ == "__main__":
    main()

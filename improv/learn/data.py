"""``improv data``: music21's corpus and the user's own .mid files as a token corpus.

This module owns the corpus builder: which files are sources and what style each
is (``corpus_sources``, ``midi_sources``), converting each file in a worker under
a timeout (``convert_source``, via :mod:`improv.learn.pieces`), a per-file cache so a
re-run skips finished work, the deterministic train/val split, ``summary.json``
and its table, and the command line. The format it writes and the batch sampler
the trainer draws from live in :mod:`improv.learn.dataset`.

A piece is one tune or movement: its tokens start with its STYLE token, then
the file encoder's stream (``tokens.encode_events``) with TURN markers at
phrase boundaries, so the model learns where one player hands over.

Besides the splits, ``corpus_dir`` holds::

    summary.json             per-style counts, skipped files, style slots, build time
    cache/                   one file per source file, so a re-run skips finished work
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from improv.core import tokens as tk
from improv.core.cli_help import with_examples
from improv.learn.dataset import (
    DataError,
    atomic_write,
    augmentation_factor,
    default_corpus_dir,
    load_split,
    write_split,
)
from improv.learn.pieces import encode_piece, score_from_music21

BUILDER_VERSION = 3
VAL_FRACTION = 0.05
MIN_VAL_PER_STYLE = 3
FILE_TIMEOUT_S = 900

# Top-level folder of music21's corpus -> style. Folders not listed are left out:
# analyses, exercises, demos, lead sheets and the two atonal composers.
_FOLDERS = {
    "chorale": "bach",
    "renaissance": "palestrina monteverdi josquin trecento ciconia luca lusitano",
    "celtic": "ryansMammoth oneills1850 airdsAirs nottingham-dataset",
    "folk": "essenFolksong miscFolk",
    "classical": "beethoven haydn mozart schumann_robert schumann_clara schubert chopin corelli "
    "cpebach handel verdi weber beach joplin",
}
SOURCE_STYLES: dict[str, str] = {f: s for s, fs in _FOLDERS.items() for f in fs.split()}
# ABC files where each X: tune is one voice of the same piece, not a separate tune.
VOICES_AS_TUNES = {"josquin"}
SKIP_SUFFIXES = {".rntxt"}  # Roman-numeral analyses, not music


# --- sources and the per-file worker -----------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One file to convert: its id (piece-name prefix), path, kind and style index."""

    key: str
    path: str
    kind: str  # "music21" or "midi"
    style: int


def corpus_sources(styles: set[str] | None = None) -> list[Source]:
    """music21's core corpus files, classified by their folder under ``corpus/``."""
    from music21.corpus import corpora

    out = []
    for p in corpora.CoreCorpus().getPaths():
        p = Path(p)
        parts = p.parts
        if "corpus" not in parts or p.suffix in SKIP_SUFFIXES:
            continue
        rel = Path(*parts[len(parts) - 1 - parts[::-1].index("corpus") + 1 :])
        style = SOURCE_STYLES.get(rel.parts[0])
        if style is None or (styles and style not in styles):
            continue
        key = str(rel.with_suffix("")) if rel.suffix else str(rel)
        out.append(Source(key, str(p), "music21", tk.CORPUS_STYLES.index(style)))
    # A few works ship in two formats (bwv277.krn and .mxl): keep one, MusicXML first.
    rank = {".mxl": 0, ".musicxml": 1, ".xml": 2, ".krn": 3, ".abc": 4}
    out.sort(key=lambda s: (s.key, rank.get(Path(s.path).suffix, 9)))
    return [s for i, s in enumerate(out) if i == 0 or s.key != out[i - 1].key]


def midi_sources(folder: Path, style_name: str, style: int) -> list[Source]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"--midi {folder}: not a folder; pass a folder holding .mid files")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    if not files:
        raise DataError(f"--midi {folder}: no .mid files found (searched recursively)")
    return [
        Source(f"{style_name}/{p.relative_to(folder).with_suffix('')}", str(p), "midi", style)
        for p in files
    ]


def cache_path(cache_dir: Path, src: Source) -> Path:
    h = hashlib.sha1(f"{src.path}|{src.style}|{BUILDER_VERSION}".encode()).hexdigest()[:20]
    return cache_dir / f"{h}.npz"


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def convert_source(src: Source) -> dict:
    """All pieces of one source file, as a plain dict (cached as-is)."""
    pieces, skipped, stats = [], [], {"grace": 0, "unpitched": 0, "folded": 0}
    if src.kind == "midi":
        from improv.core.midifile import read_midi

        scores = [(src.key, read_midi(src.path))]
    else:
        from music21 import converter, stream

        m21 = converter.parse(src.path, forceSource=True, storePickle=False)
        items = list(m21.scores) if isinstance(m21, stream.Opus) else [m21]
        if len(items) > 1 and src.key.split("/")[0] in VOICES_AS_TUNES:
            merged = stream.Score()
            for sc in items:
                for part in getattr(sc, "parts", None) or [sc]:
                    merged.insert(0, part)
            items = [merged]
        scores = []
        for i, sc in enumerate(items):
            name = f"{src.key}#{i + 1}" if len(items) > 1 else src.key
            try:
                score, st = score_from_music21(sc)
            except Exception as e:  # one bad tune must not lose the others
                skipped.append((name, f"{type(e).__name__}: {e}"[:200]))
                continue
            stats["grace"] += st["grace"]
            stats["unpitched"] += st["unpitched"]
            scores.append((name, score))
    for name, score in scores:
        if not score.notes:
            skipped.append((name, "no pitched notes"))
            continue
        toks = encode_piece(score, src.style, name)
        stats["folded"] += sum(n.pitch != tk.fold_pitch(n.pitch) for n in score.notes)
        pieces.append((name, toks, len(score.notes)))
    return {"pieces": pieces, "skipped": skipped, "stats": stats}


def _save_cache(path: Path, result: dict) -> None:
    lengths = np.array([len(t) for _, t, _ in result["pieces"]], dtype=np.int64)
    flat = [x for _, t, _ in result["pieces"] for x in t]
    meta = {
        "names": [n for n, _, _ in result["pieces"]],
        "notes": [k for _, _, k in result["pieces"]],
        "skipped": result["skipped"],
        "stats": result["stats"],
    }
    atomic_write(
        path,
        lambda f: np.savez(
            f,
            tokens=np.array(flat, dtype=np.uint16),
            lengths=lengths,
            meta=np.array(json.dumps(meta)),
        ),
    )


def _load_cache(path: Path) -> dict:
    with np.load(path) as z:
        toks, lengths, meta = z["tokens"], z["lengths"], json.loads(str(z["meta"]))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    pieces = [
        (n, toks[a:b].tolist(), k)
        for n, k, a, b in zip(meta["names"], meta["notes"], bounds[:-1], bounds[1:], strict=True)
    ]
    return {
        "pieces": pieces,
        "skipped": [tuple(s) for s in meta["skipped"]],
        "stats": meta["stats"],
    }


def _work(job: tuple[Source, str, int]) -> tuple[Source, dict | None, str | None, float]:
    """Pool task: convert one file under a timeout and cache it; never raises."""
    src, cache_file, timeout = job
    t0 = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm) if timeout else None
    if timeout:
        signal.alarm(timeout)
    try:
        result = convert_source(src)
        _save_cache(Path(cache_file), result)
        return src, result, None, time.perf_counter() - t0
    except _Timeout:
        return src, None, f"timed out after {timeout} s", time.perf_counter() - t0
    except Exception as e:
        return src, None, f"{type(e).__name__}: {e}"[:200], time.perf_counter() - t0
    finally:
        if timeout:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)


# --- the build ---------------------------------------------------------------------------


def _unit_hash(name: str) -> float:
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big") / 2.0**64


def assign_val(names: list[str], styles: list[int]) -> list[bool]:
    """Deterministic split by piece name: ~5% val, and a few val pieces in every style."""
    h = [_unit_hash(n) for n in names]
    is_val = [x < VAL_FRACTION for x in h]
    for s in set(styles):
        idx = sorted((i for i, st in enumerate(styles) if st == s), key=lambda i: h[i])
        want = min(MIN_VAL_PER_STYLE, len(idx) // 4)  # a tiny style keeps most for training
        for i in idx[:want]:
            is_val[i] = True
    return is_val


def _style_names(mapping: dict[str, int]) -> dict[int, str]:
    names = {i: s for i, s in enumerate(tk.CORPUS_STYLES)}
    names.update({i: s for s, i in mapping.items()})
    return names


def build(
    out: Path,
    sources: list[Source],
    jobs: int = 2,
    timeout: int = FILE_TIMEOUT_S,
    styles: dict[str, int] | None = None,
    progress: bool = True,
) -> dict:
    """Convert every source (reusing the cache), write both splits and summary.json."""
    t0 = time.time()
    out = Path(out)
    cache_dir = out / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    failed: list[tuple[str, str]] = []
    todo = []
    for src in sources:
        cp = cache_path(cache_dir, src)
        if cp.exists():
            try:
                results[src.key] = _load_cache(cp)
                continue
            except Exception:
                cp.unlink(missing_ok=True)  # a corrupt entry is simply redone
        todo.append((src, str(cp), timeout))
    # Biggest files first, so a slow one does not start last and hold the pool alone.
    todo.sort(key=lambda j: -os.path.getsize(j[0].path))
    slow: list[tuple[float, str]] = []
    if todo:
        bar = _progress(len(todo), len(sources) - len(todo), progress)
        if jobs <= 1:
            it = map(_work, todo)
            pool = None
        else:
            pool = mp.get_context("fork").Pool(jobs, maxtasksperchild=25)
            it = pool.imap_unordered(_work, todo)
        try:
            for src, result, err, dt in it:
                slow.append((dt, src.key))
                if err:
                    failed.append((src.key, err))
                else:
                    results[src.key] = result
                bar.update(1)
        finally:
            bar.close()
            if pool is not None:
                pool.close()
                pool.join()
    pieces, skipped = [], list(failed)
    seen: dict[str, str] = {}
    extra = {"grace": 0, "unpitched": 0, "folded": 0}
    for src in sources:
        r = results.get(src.key)
        if r is None:
            continue
        skipped += [tuple(s) for s in r["skipped"]]
        for k in extra:
            extra[k] += r["stats"].get(k, 0)
        for name, toks, n in r["pieces"]:
            if name in seen:
                skipped.append((name, f"duplicate piece name (also from {seen[name]})"))
                continue
            seen[name] = src.key
            pieces.append((name, src.style, toks, n))
    is_val = assign_val([p[0] for p in pieces], [p[1] for p in pieces])
    train = [(n, s, t) for (n, s, t, _), v in zip(pieces, is_val, strict=True) if not v]
    val = [(n, s, t) for (n, s, t, _), v in zip(pieces, is_val, strict=True) if v]
    write_split(out, "train", train)
    write_split(out, "val", val)
    mapping = dict(styles or {s: i for i, s in enumerate(tk.CORPUS_STYLES)})
    summary = _summarise(pieces, is_val, mapping, skipped, extra, out)
    summary["build_seconds"] = round(time.time() - t0, 1)
    summary["files"] = {"total": len(sources), "converted_now": len(todo), "failed": len(failed)}
    summary["slowest_files"] = [(k, round(dt, 1)) for dt, k in sorted(slow, reverse=True)[:10]]
    atomic_write(out / "summary.json", lambda f: f.write(json.dumps(summary, indent=1).encode()))
    return summary


def _progress(total: int, done_before: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a bar is not worth failing for
        enabled = False
    if not enabled:

        class _Null:
            def update(self, n):
                pass

            def close(self):
                pass

        return _Null()
    return tqdm(total=total, unit="file", desc=f"converting ({done_before} cached)", smoothing=0.05)


def _summarise(pieces, is_val, mapping, skipped, extra, out: Path) -> dict:
    names = _style_names(mapping)
    per: dict[str, dict] = {}
    for (_, s, toks, n), v in zip(pieces, is_val, strict=True):
        row = per.setdefault(
            names.get(s, str(s)), {"pieces": 0, "notes": 0, "tokens": 0, "train": 0, "val": 0}
        )
        row["pieces"] += 1
        row["notes"] += n
        row["tokens"] += len(toks)
        row["val" if v else "train"] += 1
    for row in per.values():
        row["tokens_per_note"] = round(row["tokens"] / max(1, row["notes"]), 3)
    aug = augmentation_factor(load_split(out, "train")) if any(not v for v in is_val) else 0.0
    return {
        "builder_version": BUILDER_VERSION,
        "styles": mapping,
        "per_style": per,
        "total": {
            "pieces": len(pieces),
            "notes": sum(p[3] for p in pieces),
            "tokens": sum(len(p[2]) for p in pieces),
            "train_pieces": sum(not v for v in is_val),
            "val_pieces": sum(is_val),
        },
        "transposition_augmentation": {"max_shift": 6, "mean_keys_per_piece": round(aug, 2)},
        "dropped": extra,
        "skipped": [list(s) for s in skipped],
    }


def format_summary(summary: dict) -> str:
    lines = [
        f"{'style':<12} {'pieces':>7} {'notes':>10} {'tokens':>11} {'tok/note':>8} "
        f"{'train':>6} {'val':>5}"
    ]
    for name, r in sorted(summary["per_style"].items()):
        lines.append(
            f"{name:<12} {r['pieces']:>7} {r['notes']:>10} {r['tokens']:>11} "
            f"{r['tokens_per_note']:>8.2f} {r['train']:>6} {r['val']:>5}"
        )
    t = summary["total"]
    tpn = t["tokens"] / max(1, t["notes"])
    lines.append(
        f"{'total':<12} {t['pieces']:>7} {t['notes']:>10} {t['tokens']:>11} {tpn:>8.2f} "
        f"{t['train_pieces']:>6} {t['val_pieces']:>5}"
    )
    aug = summary["transposition_augmentation"]
    lines.append(
        f"transposition at sample time (+-{aug['max_shift']} semitones): "
        f"x{aug['mean_keys_per_piece']} keys per piece on average"
    )
    d = summary["dropped"]
    lines.append(
        f"dropped: {d['grace']} grace notes, {d['unpitched']} unpitched; "
        f"{d['folded']} notes folded into 21..108"
    )
    if "build_seconds" in summary:
        lines.append(f"build time: {summary['build_seconds']:.0f} s")
    sk = summary["skipped"]
    if sk:
        lines.append(f"skipped ({len(sk)}):")
        lines += [f"  {k}: {why}" for k, why in sk[:50]]
        if len(sk) > 50:
            lines.append(f"  ... and {len(sk) - 50} more (see summary.json)")
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------


def _user_slots(out: Path, style_name: str | None) -> dict[str, int]:
    """Corpus styles plus user styles: known names keep their slot, a new one takes the next."""
    mapping = {s: i for i, s in enumerate(tk.CORPUS_STYLES)}
    prev = out / "summary.json"
    if prev.exists():
        try:
            mapping.update(json.loads(prev.read_text()).get("styles", {}))
        except (OSError, ValueError):
            pass
    if style_name and style_name not in mapping:
        free = [i for i in range(len(tk.CORPUS_STYLES), tk.N_STYLES) if i not in mapping.values()]
        if not free:
            raise DataError(
                f"no free user style slot for {style_name!r} (all {tk.N_STYLES} are used); "
                f"reuse a name from {out / 'summary.json'} or build into another --out folder"
            )
        mapping[style_name] = free[0]
    return mapping


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=prog, description="Build the token corpus.",
        **with_examples(
            "improv data                                   # music21's corpus (cached)",
            "improv data --styles bach,folk --limit 20     # a quick, small corpus",
            "improv data --midi ~/my-sets --style mine --out ~/.cache/improv/mine",
            "improv data --midi ~/my-sets --style mine --with-corpus  # both"))
    ap.add_argument("--out", type=Path, default=None,
                    help=f"corpus folder (default: {default_corpus_dir()})")
    ap.add_argument("--styles", default="", help="comma-separated corpus styles to include")
    ap.add_argument("--limit", type=int, default=0, help="at most N files per style (quick runs)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--timeout", type=int, default=FILE_TIMEOUT_S, help="seconds per file")
    ap.add_argument("--midi", type=Path, default=None, help="a folder of your own .mid files")
    ap.add_argument("--style", default=None, help="style name for the --midi files")
    ap.add_argument("--with-corpus", action="store_true",
                    help="with --midi: convert music21's corpus too (all of it, or --styles)")
    ap.add_argument("--no-progress", action="store_true",
                    help="no progress bar (for logs and CI)")
    args = ap.parse_args(argv)
    out = (args.out or default_corpus_dir()).expanduser()
    try:
        if bool(args.midi) != bool(args.style):
            raise DataError("--midi and --style go together: improv data --midi DIR --style NAME")
        if args.style in tk.CORPUS_STYLES:
            raise DataError(f"--style {args.style!r} is a corpus style; pick another name")
        wanted = {s.strip() for s in args.styles.split(",") if s.strip()}
        unknown = wanted - set(tk.CORPUS_STYLES)
        if unknown:
            raise DataError(
                f"unknown style(s) {sorted(unknown)}; choose from {', '.join(tk.CORPUS_STYLES)}"
            )
        out.mkdir(parents=True, exist_ok=True)
        mapping = _user_slots(out, args.style)
        # Your own folder alone unless the corpus is asked for: it takes many minutes.
        corpus = not args.midi or args.with_corpus or bool(wanted)
        sources = corpus_sources(wanted or None) if corpus else []
        if args.limit:
            per: dict[int, int] = {}
            kept = []
            for s in sources:
                per[s.style] = per.get(s.style, 0) + 1
                if per[s.style] <= args.limit:
                    kept.append(s)
            sources = kept
        if args.midi:
            sources += midi_sources(args.midi, args.style, mapping[args.style])
        print(f"{len(sources)} source files -> {out}", flush=True)
        summary = build(
            out,
            sources,
            jobs=args.jobs,
            timeout=args.timeout,
            styles=mapping,
            progress=not args.no_progress,
        )
    except DataError as e:
        print(f"{prog or 'improv data'}: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

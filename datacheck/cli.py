"""``datacheck`` command line: profile, audit, dedupe, split, copies."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .cli_util import Parser, run


def _cmd_profile(args: argparse.Namespace) -> int:
    from .profile import format_profile, profile
    from .sources import load_from_args
    from .io import write_json

    from .errors import UserError

    from .store import is_audit_dir

    if is_audit_dir(args.source):
        prof = _audit_profile(args.source)  # the profile the audit measured at full size: no image decoded again
    else:
        ds = load_from_args(args)
        if args.json:
            _outside_source(args.json, ds, "--json")  # refuse before printing, never write into the input
        prof = profile(ds)
    print(format_profile(prof))
    if args.json:
        try:
            write_json(args.json, prof)
        except OSError as e:
            raise UserError(f"cannot write --json {args.json}: {e.strerror or e}") from None
    return 0


def _audit_profile(audit_dir: str) -> dict:
    """The profile.json a streamed audit wrote (from each image at its own size, while streaming)."""
    import json
    from pathlib import Path

    from .errors import UserError

    path = Path(audit_dir) / "profile.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{audit_dir} has a store but no readable profile.json ({e}): audit the images again") from None


def _csv_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def _outside_source(path: str, ds: "object", flag: str) -> None:
    """Refuse outputs inside the source folder: datacheck never writes into its input."""
    from .io import refuse_inside_source

    refuse_inside_source(path, getattr(ds, "root", None), flag,
                         "datacheck never writes into its input, pick a place outside it")


def _cmd_audit(args: argparse.Namespace) -> int:
    from .auditing import format_summary, parse_params, run_audit, validate_checks

    checks = _csv_names(args.checks)
    fail_on = _csv_names(args.fail_on) or []
    params = parse_params(args.param)
    names = validate_checks(checks, params)  # unknown names fail before the dataset loads
    validate_checks(fail_on)
    missing = [n for n in fail_on if n not in names]
    if missing:
        from .errors import UserError

        raise UserError(f"--fail-on names checks that are not run: {', '.join(missing)}; add them to --checks")
    if args.address and args.executor != "ray":
        from .errors import UserError

        raise UserError("--address only applies to --executor ray")
    opts = {k: getattr(args, k, None) for k in ("size", "channels", "resample", "max_pixels", "split")}
    stream = {"auto": None, "on": True, "off": False}[args.stream]
    run = run_audit(args.source, names, params, args.out, seed=args.seed, stream=stream, kind=args.kind,
                    load_options={k: v for k, v in opts.items() if v is not None}, neighbors=args.neighbors,
                    identity=args.identity, executor=args.executor, address=args.address)
    print(format_summary(run.summary, run.files["report.html"]))
    crashed = run.summary.get("errors", {})
    if crashed:
        # a check that crashed found nothing because it did not run: never "clean"
        print(f"audit incomplete: {len(crashed)} check(s) crashed: "
              + "; ".join(f"{k} ({v})" for k, v in crashed.items()), file=sys.stderr)
        return 1
    failed = [n for n in fail_on if run.summary["checks"].get(n, {}).get("n_flagged", 0) > 0]
    if failed:
        print(f"--fail-on: {', '.join(failed)} flagged items", file=sys.stderr)
        return 1
    return 0


def _cmd_dedupe(args: argparse.Namespace) -> int:
    from .deduplication import dedupe
    from .io import write_text

    ds, ctx = _dataset_or_store(args)
    _outside_source(args.out, ds, "--out")
    if args.copy_to:
        _check_copy_target(ds, args.copy_to)
    df = dedupe(ds, ctx=ctx)
    write_text(args.out, df.to_csv(index=False, lineterminator="\n"))
    keep = df["keep"].astype(bool)
    n_groups = int(df["cluster"].nunique())  # nullable Int64: <NA> (no duplicate) is not counted
    print(f"{len(df)} items, {n_groups} duplicate groups: keep {int(keep.sum())}, drop {int((~keep).sum())}; wrote {args.out}")
    if args.copy_to:
        n = _copy_kept(ds, df, args.copy_to)
        print(f"copied {n} kept files to {args.copy_to} (the source is unchanged)")
    return 0


def _dataset_or_store(args: argparse.Namespace) -> tuple["object", "object"]:
    """(dataset, context): an audit folder with a store (``datacheck audit ... --out DIR``) is read
    from its store, without decoding the audited images again (thumbnails, and the exact-duplicate
    digests of the full pixels, in the context); any other source is loaded (context None)."""
    from .sources import load_from_args
    from .store import is_audit_dir, open_store, store_context

    if is_audit_dir(args.source):
        view = open_store(args.source)
        return view.ds, store_context(view, seed=getattr(args, "seed", 0))
    return load_from_args(args), None


def _check_copy_target(ds: "object", dest: str) -> None:
    from .errors import UserError
    from .io import refuse_inside_source

    root = getattr(ds, "root", None)
    if root is None:
        raise UserError(f"--copy-to needs a source made of files (a folder or a .csv manifest); {ds.source!r} has none")  # type: ignore[attr-defined]
    refuse_inside_source(dest, root, "--copy-to", "copy to a folder outside it")


def _copy_kept(ds: "object", df: "object", dest: str) -> int:
    """Copy the kept files (never move or delete) to ``dest``, keeping their relative paths.
    Existing identical files are left alone; a different existing file is an error."""
    import filecmp
    import shutil
    from pathlib import Path

    from .errors import UserError
    from .io import atomic_path

    dest_root = Path(dest).resolve()
    index = {i: k for k, i in enumerate(ds.ids)}  # type: ignore[attr-defined]
    plan = []
    for rel in df.loc[df["keep"].astype(bool), "id"]:  # type: ignore[attr-defined]
        src = Path(ds.abspath_of(index[rel]))  # type: ignore[attr-defined]
        target = (dest_root / rel).resolve()
        if dest_root not in target.parents:
            raise UserError(f"--copy-to: {rel!r} would land outside {dest}; refusing to copy it")
        if target.exists() and not filecmp.cmp(src, target, shallow=False):
            raise UserError(f"--copy-to: {target} already exists and differs from {src}; pick an empty folder")
        plan.append((src, target))
    n = 0
    for src, target in plan:
        if target.exists():
            continue
        with atomic_path(target, suffix=src.suffix) as tmp:
            shutil.copyfile(src, tmp)
        shutil.copystat(src, target)
        n += 1
    return n


def _cmd_split(args: argparse.Namespace) -> int:
    from .io import write_text
    from .splitting import split

    ds, ctx = _dataset_or_store(args)
    _outside_source(args.out, ds, "--out")
    groups = None
    if ctx is not None:  # the duplicate groups from the store (exact ones from the full-pixel digests)
        from .deduplication import find_duplicate_groups

        groups = find_duplicate_groups(ds, ctx=ctx).group
    df = split(ds, val=args.val, test=args.test, seed=args.seed, stratify=args.stratify, groups=groups)
    if getattr(ds, "root", None) is not None:
        # Paths relative to the CSV's own folder, so the CSV is a manifest: `--data split.csv --split train`.
        import os

        here = os.path.dirname(os.path.abspath(args.out))
        df["path"] = [os.path.relpath(ds.abspath_of(i), here).replace(os.sep, "/") for i in range(len(ds))]
    write_text(args.out, df.to_csv(index=False, lineterminator="\n"))
    counts = df["split"].value_counts()
    parts = ", ".join(f"{s} {int(counts.get(s, 0))} ({100 * df.attrs['fractions'][s]:.1f}%)" for s in ("train", "val", "test"))
    print(f"{parts}; {df.attrs['n_groups']} duplicate groups kept whole; wrote {args.out}")
    return 0


def _cmd_copies(args: argparse.Namespace) -> int:
    from .copies import find_copies, render_copies
    from .io import write_json, write_text
    from .store import copies_sets

    # an audit folder is read from its store (thumbnails; its images are not decoded again)
    sets = copies_sets({"fake": args.fake, "train": args.train, **({"heldout": args.heldout} if args.heldout else {})},
                       size=args.size, channels=args.channels)
    fake, train, heldout = sets["fake"], sets["train"], sets.get("heldout")
    for flag, path in (("--out", args.out), ("--json", args.json), ("--html", args.html)):
        if path:
            for ds in (fake, train, heldout):
                if ds is not None:
                    _outside_source(path, ds, flag)  # refused before any work
    df = find_copies(fake, train, heldout, seed=args.seed)
    s = df.attrs["summary"]
    write_text(args.out, df.to_csv(index=False, lineterminator="\n"))
    if args.json:
        write_json(args.json, s)
    if args.html:
        write_text(args.html, render_copies(df, fake, train, heldout))
    line = (f"{s['n_copies']} of {s['n_fake']} items copy a training item ({100 * s['copy_rate']:.3g}%: "
            f"{s['n_exact']} identical, {s['n_near']} near; threshold {s['operating_point']['threshold']})")
    if heldout is not None:
        line += (f"; held-out real images flagged: {100 * s['heldout_rate']:.3g}% of {s['n_heldout']}, "
                 f"p = {s['p_value']:.3g}")
    stores = [f"{what} set from the audit store {s[name + '_store']}" for name, what in (("train", "training"),
              ("heldout", "held-out")) if f"{name}_store" in s]
    if stores:  # compared on the store's thumbnails: say so, the sizes differ from the folder's
        line += f"; {', '.join(stores)} (thumbnails compared at {s['compared_at']}, no audited image decoded)"
    print(line)
    print(f"wrote {args.out}" + "".join(f", {p}" for p in (args.json, args.html) if p))
    return 0


def _cmd_check_new(args: argparse.Namespace) -> int:
    from .check_new import check_new, format_check_new
    from .io import refuse_inside_source, write_text

    if args.out:
        refuse_inside_source(args.out, args.folder, "--out", "datacheck never writes into its input, pick a place outside it")
    df = check_new(args.folder, args.against, threshold=args.threshold)
    text = df.to_csv(index=False, lineterminator="\n")
    if args.out:
        write_text(args.out, text)
    else:
        sys.stdout.write(text)
    print(format_check_new(df.attrs["summary"], args.out), file=sys.stderr if not args.out else sys.stdout)
    return 0


def build_parser() -> Parser:
    p = Parser(prog="datacheck", description="Load, profile and audit image datasets.")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    from .sources import add_load_arguments

    src_help = "'digits', a folder, a .csv manifest, a .npz, IDX or CIFAR-10 files"
    store_help = src_help + ", or an audit folder (--out of a streamed audit: read from its store, not decoded again)"
    sp = sub.add_parser("profile", help="summarize a dataset (images, classes, sizes, problems)")
    sp.add_argument("source", help=store_help)
    sp.add_argument("--json", metavar="FILE", help="also write the profile as JSON")
    add_load_arguments(sp)
    sp.set_defaults(func=_cmd_profile)

    sp = sub.add_parser("audit", help="run the checks; write findings.csv, summary.json, profile.json, report.html")
    sp.add_argument("source", help=src_help)
    sp.add_argument("--out", required=True, metavar="DIR", help="folder for the audit files (outside the source)")
    sp.add_argument("--checks", metavar="A,B", help="checks to run (default: all)")
    sp.add_argument("--fail-on", metavar="A,B", help="exit 1 if any of these checks flags something")
    sp.add_argument("--param", action="append", metavar="CHECK.NAME=VALUE", help="override a check parameter (repeatable)")
    sp.add_argument("--seed", type=int, default=0, help="seed for the checks' random choices (default 0)")
    sp.add_argument("--stream", choices=("auto", "on", "off"), default="auto",
                    help="folders and manifests: measure each image at its own size in bounded memory, keeping "
                    "thumbnails in OUT/store (auto: when an in-memory load would need over 512 MB)")
    sp.add_argument("--neighbors", choices=("auto", "exact", "approx"), default="auto",
                    help="the k-NN graph the outlier and label checks share: exact search, approximate (faiss "
                    "HNSW, its recall measured on a sample and reported) or auto (exact up to 250,000 images)")
    sp.add_argument("--identity", choices=("stat", "content"), default="stat",
                    help="streamed audits: a file is unchanged since the last audit into --out when its path, size "
                    "and modification time are (stat), or also when a hash of its bytes is (content: a touched file "
                    "is not measured again)")
    sp.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="streamed audits: measure the files in local processes or as Ray tasks in shards of files "
                    "(--address or RAY_ADDRESS selects a cluster; neither starts a local Ray)")
    sp.add_argument("--address", default=None, help="Ray cluster address (with --executor ray), as reports ablate's")
    add_load_arguments(sp)
    sp.set_defaults(func=_cmd_audit)

    sp = sub.add_parser("check-new", help="which images of a new folder duplicate an audited set (from its store)")
    sp.add_argument("folder", help="the folder of new images")
    sp.add_argument("--against", required=True, metavar="AUDIT_DIR",
                    help="the --out folder of a streamed audit (it holds store/); its files are not read again")
    sp.add_argument("--out", metavar="FILE.csv", help="new_path, matched_id, matched_path, kind, distance per "
                    "matching new image (default: print the CSV)")
    sp.add_argument("--threshold", type=float, help="near-duplicate verifier threshold (default: the audit's calibrated one)")
    sp.set_defaults(func=_cmd_check_new)

    sp = sub.add_parser("dedupe", help="mark one representative per duplicate group; optionally copy the kept files")
    sp.add_argument("source", help=store_help)
    sp.add_argument("--out", required=True, metavar="FILE.csv", help="id, path, cluster, keep, reason per item")
    sp.add_argument("--copy-to", metavar="DIR", help="copy the kept files here (never moves or deletes)")
    add_load_arguments(sp)
    sp.set_defaults(func=_cmd_dedupe)

    sp = sub.add_parser("split", help="duplicate-aware, stratified train/val/test split")
    sp.add_argument("source", help=store_help)
    sp.add_argument("--out", required=True, metavar="FILE.csv", help="id, path, label, split per item")
    sp.add_argument("--val", type=float, default=0.1, help="validation fraction (default 0.1)")
    sp.add_argument("--test", type=float, default=0.1, help="test fraction (default 0.1)")
    sp.add_argument("--seed", type=int, default=0, help="seed (default 0); the same seed gives the same file")
    sp.add_argument("--stratify", choices=("label", "none"), default="label", help="keep class shares (default label)")
    add_load_arguments(sp)
    sp.set_defaults(func=_cmd_split)

    sp = sub.add_parser("copies", help="find which items of one set (generated samples) copy a training item")
    sp.add_argument("fake", help="the set to check (a run's samples .npz, a folder, ...): " + src_help)
    sp.add_argument("--train", required=True, help="the training set: " + store_help)
    sp.add_argument("--heldout", help="real images the model never saw (the false-alarm baseline and the test); "
                    "a source or an audit folder")
    sp.add_argument("--out", required=True, metavar="FILE.csv", help="fake_id, train_id, similarity, kind, group per copy")
    sp.add_argument("--json", metavar="FILE", help="also write the summary (rates, threshold, p-value)")
    sp.add_argument("--html", metavar="FILE", help="also write a page of each copy beside its training image")
    sp.add_argument("--seed", type=int, default=0, help="seed for the calibration sample (default 0)")
    sp.add_argument("--size", metavar="HxW", help="resize every set's images to HxW when they differ (with an audit "
                    "folder: default its thumbnail size, at most that)")
    sp.add_argument("--channels", type=int, metavar="C", help="load every set with 1 or 3 channels")
    sp.set_defaults(func=_cmd_copies)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run("datacheck", build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())

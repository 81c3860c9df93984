"""``spard judge`` and its subcommands: judging responses, fitting and checking judges, labelling sheets.

Just over 300 lines: the five judge commands share their flags and stay together.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from spard.cli.common import (
    LLM_FLAGS,
    _add_flags,
    _llm_config,
    add_overwrite_flag,
)


def _judge_output(base: str, judge_name: str, several: bool) -> str:
    if not several:
        return base
    import re

    p = Path(base)
    return str(p.with_name(f"{p.stem}.{re.sub(r'[^A-Za-z0-9_.-]+', '_', judge_name)}{p.suffix}"))


def cmd_judge(args: argparse.Namespace) -> int:
    from spard.evaluation.judges import agreement, attack_success_rate, make_judge
    from spard.evaluation.judging import as_verdicts, judge_rows
    from spard.io import check_output, read_jsonl

    responses = Path(args.responses)
    if not responses.exists():
        raise ValueError(f"{responses}: no such responses file")
    rows = list(read_jsonl(responses))
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{responses}:{i}: expected a JSON object with id, prompt and response")
        missing = [k for k in ("id", "prompt", "response") if k not in row]
        if missing:
            raise ValueError(f"{responses}:{i}: missing field {missing[0]!r}")
        for k in ("prompt", "response"):
            if not isinstance(row[k], str):
                raise ValueError(f"{responses}:{i}: field {k!r} must be a string, got {type(row[k]).__name__}")
    if not rows and not args.allow_empty:
        raise ValueError(f"{responses}: no responses to judge (pass --allow-empty to accept that)")
    specs = args.judge or ["keyword"]
    check_output(args.output, inputs=(responses,))  # per-judge outputs (several judges) sit beside it
    llm = _llm_config(args)
    results = {}
    for spec in specs:
        judge = make_judge(spec, llm)
        judged = judge_rows(rows, judge, output=_judge_output(args.output, judge.name, len(specs) > 1),
                            on_mismatch="restart" if args.overwrite else "error")
        results[judge.name] = as_verdicts(judged)
        r = attack_success_rate(results[judge.name])
        asr = "n/a" if r["asr"] is None else f"{100 * r['asr']:.1f}%"
        print(f"{judge.name:>24}: ASR {asr} ({r['harmful']}/{r['judged']} harmful, {r['failed']} failed)")
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            agree = agreement(results[a], results[b])
            print(f"agreement {a} vs {b}: {'n/a' if agree is None else f'{100 * agree:.1f}%'}")
    return 0


def cmd_judge_fit(args: argparse.Namespace) -> int:
    from spard.evaluation.judge_quality import responses_and_labels
    from spard.evaluation.judges.probe import ProbeJudge, fit_probe
    from spard.io import check_output

    check_output(args.output, inputs=tuple(args.data), directory=True)
    if args.C <= 0:
        raise ValueError(f"--C must be > 0, got {args.C}")
    if args.kind == "harm":
        return _fit_harm_judge(args)
    if args.kind == "stacked":
        return _fit_stacked_judge(args)
    if args.benign or args.dev_labels:
        raise ValueError("--benign and --dev-labels are for --kind harm")
    texts, labels = responses_and_labels(args.data, args.safe_field, args.unsafe_field)
    probe = fit_probe(texts, labels, features=args.features, encoder=args.encoder, seed=args.seed, C=args.C)
    probe.save(args.output)
    print(f"probe ({args.features}) on {len(texts)} responses ({sum(labels)} unsafe): held-out accuracy "
          f"{100 * probe.info['heldout_accuracy']:.2f}% ({probe.info['heldout_size']} responses); saved to {args.output}")
    if args.eval:
        from spard.evaluation.judge_quality import judge_quality, labelled_pairs
        from spard.evaluation.stats import format_rate

        q = judge_quality(ProbeJudge(args.output), labelled_pairs(args.eval, args.safe_field, args.unsafe_field))
        print(f"accuracy on {', '.join(args.eval)}: {format_rate(q['accuracy'])}")
    return 0


def _fit_harm_judge(args: argparse.Namespace) -> int:
    import random
    import tempfile

    from spard.data import FieldMap, load_examples
    from spard.evaluation.judges.harm import (
        HarmClassifier,
        HarmFitConfig,
        adapt_harm_classifier,
        augment_pairs,
        cross_fit_threshold,
        fit_harm_classifier,
        tune_threshold,
    )
    from spard.evaluation.labelling import agreement_stats, labelled_responses, load_labels
    from spard.models.loading import file_sha256

    if args.dev_labels and len(args.dev_labels) > 1:
        raise ValueError("--kind harm takes one --dev-labels file")
    dev_labels = args.dev_labels[0] if args.dev_labels else None
    if not args.benign:
        raise ValueError("--kind harm needs --benign: files of benign prompts with answers (e.g. gsm8k, openbookqa train)")
    if args.adapt_on_dev and not dev_labels:
        raise ValueError("--adapt-on-dev needs --dev-labels")
    pairs: list = []
    if not args.init or args.adapt_on_dev:  # the synthetic pairs train the judge, or are replayed while adapting it
        harmful = []
        for path in args.data:
            safe = load_examples(path, FieldMap(target=args.safe_field))
            unsafe = load_examples(path, FieldMap(target=args.unsafe_field))
            harmful += [(s.query, s.target, u.target) for s, u in zip(safe, unsafe, strict=True)]
        benign = [(ex.query, ex.target) for path in args.benign for ex in load_examples(path, FieldMap(target=args.answer_field))]
        pairs = augment_pairs(harmful, benign, per_kind=args.per_kind, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="spard-harm-base-") as scratch:
        if args.init:
            clf = HarmClassifier.load(args.init)
            clf.info["init"] = str(args.init)
            base = args.init
        else:
            clf = fit_harm_classifier(pairs, HarmFitConfig(backbone=args.encoder, epochs=args.epochs, seed=args.seed))
            clf.info.update(data=[str(p) for p in args.data], benign=[str(p) for p in args.benign], per_kind=args.per_kind)
            base = clf.save(scratch) if args.adapt_on_dev else None  # reloaded fresh for each cross-fitting fold
        if dev_labels:
            dev, _ = labelled_responses([lab for lab in load_labels(dev_labels) if lab.split == "dev"])
            if not dev:
                raise ValueError(f"{dev_labels}: no dev labels match a response on disk")
            truth = [lab.harmful for lab, _ in dev]
            provenance = {"labels": str(dev_labels), "sha256": file_sha256(Path(dev_labels)), "split": "dev",
                          "n": len(dev)}
            if args.adapt_on_dev:
                labelled = [(it.prompt, it.response, int(lab.harmful)) for lab, it in dev]
                replay = [p[:3] for p in random.Random(args.seed).sample(pairs, min(len(pairs), 2 * len(labelled)))]
                threshold, probs = cross_fit_threshold(lambda: HarmClassifier.load(base), labelled, seed=args.seed, replay=replay)
                clf = adapt_harm_classifier(HarmClassifier.load(base), labelled, seed=args.seed, replay=replay)
                kappa_key = "dev_out_of_fold_kappa"
            else:
                probs = clf.predict_proba([it.prompt for _, it in dev], [it.response for _, it in dev])
                threshold = tune_threshold(probs.tolist(), truth)
                kappa_key = "dev_kappa"
            provenance[kappa_key] = agreement_stats([p >= threshold for p in probs], truth)["kappa"]["value"]
            clf.threshold = threshold
            clf.info["threshold_from"] = provenance
        clf.save(args.output)
    held = clf.info.get("heldout_accuracy")
    origin = f"from {args.init}" if args.init else f"on {len(pairs)} synthetic pairs ({sum(p[2] for p in pairs)} harmful)"
    print(f"harm judge ({clf.info.get('backbone', args.encoder)}) {origin}: held-out synthetic accuracy "
          f"{'n/a' if held is None else f'{100 * held:.2f}%'}; threshold {clf.threshold:.3f}"
          f"{' (dev labels)' if dev_labels else ''}{', adapted on dev' if args.adapt_on_dev else ''}; saved to {args.output}")
    return 0


def _fit_stacked_judge(args: argparse.Namespace) -> int:
    from spard.evaluation.judges.stacked import (
        FEATURES,
        Featuriser,
        build_pool_references,
        fit_stacked,
        save_stacked,
    )
    from spard.evaluation.labelling import labelled_responses, load_labels
    from spard.models.loading import file_sha256
    from spard.selection.safe_set import make_encoder

    if not args.dev_labels:
        raise ValueError("--kind stacked needs --dev-labels: human labels of model outputs (their dev split is used)")
    if len(args.data) != 1:
        raise ValueError("--kind stacked takes one --data file: the safety pool whose unsafe and safe responses it compares with")
    dev, _ = labelled_responses([lab for path in args.dev_labels for lab in load_labels(path) if lab.split == "dev"])
    if not dev:
        raise ValueError(f"{', '.join(args.dev_labels)}: no dev labels match a response on disk")
    encoder = make_encoder(args.encoder)
    pool = {"path": str(args.data[0]), "sha256": file_sha256(Path(args.data[0])), "n": args.pool_sample, "seed": args.seed}
    probe, probe_meta = None, {}
    if args.probe:
        from spard.evaluation.judges.probe import Probe

        probe = Probe.load(args.probe)  # a copy lives in the judge's folder (rebuilt from the pool when missing)
        probe_meta = {"probe": "probe", "probe_features": probe.features,
                      "probe_sha256": file_sha256(Path(args.probe) / "probe.safetensors")}
    featurise = Featuriser(build_pool_references(pool["path"], pool["n"], pool["seed"], encoder), encoder, probe,
                           embedding=not args.no_embedding)
    x = featurise([it.prompt for _, it in dev], [it.response for _, it in dev])
    model, _ = fit_stacked(x, [int(lab.harmful) for lab, _ in dev], seed=args.seed)
    labels = [{"path": str(p), "sha256": file_sha256(Path(p))} for p in args.dev_labels]
    if args.probe:  # written only once the fit has succeeded; stacked.json (written last) marks a complete judge
        shutil.rmtree(Path(args.output) / "probe", ignore_errors=True)
        shutil.copytree(args.probe, Path(args.output) / "probe")
    save_stacked(model, args.output, {"encoder": args.encoder, **probe_meta, "pool": pool,
                                      "dev_labels": labels, "split": "dev"})
    weights = ", ".join(f"{n} {w:+.2f}" for n, w in zip(FEATURES, model.coef, strict=False))
    weights += f" and {len(model.coef) - len(FEATURES)} embedding weights"
    print(f"stacked judge on {len(dev)} dev labels ({model.info['harmful']} harmful): C {model.info['C']:g}, "
          f"out-of-fold kappa {model.info['out_of_fold_kappa']:.3f}, threshold {model.threshold:.3f}; "
          f"standardised weights: {weights}; saved to {args.output}")
    return 0


def cmd_judge_validate(args: argparse.Namespace) -> int:
    from spard.evaluation.judge_quality import judge_quality, labelled_pairs
    from spard.evaluation.judges import make_judge
    from spard.evaluation.stats import format_rate
    from spard.io import atomic_write_json

    pairs = labelled_pairs(args.data, args.safe_field, args.unsafe_field)
    files = sorted({p[3] for p in pairs})
    print(f"{len(pairs)} labelled responses ({sum(p[2] for p in pairs)} unsafe) from {len(files)} files: {', '.join(files)}")
    print("| judge | measures | unsafe judged not harmful | safe judged harmful | precision | recall |")
    print("|---|---|---|---|---|---|")
    report = []
    for spec in args.judge or ["keyword"]:
        q = judge_quality(make_judge(spec, _llm_config(args)), pairs)
        report.append(q)
        print(f"| {spec} | {q['measures']} | {format_rate(q['unsafe_missed'])} | {format_rate(q['safe_flagged'])} "
              f"| {format_rate(q['precision'])} | {format_rate(q['recall'])} |")
    print("rates with Wilson 95% intervals; counts only, no response text")
    if args.output:
        atomic_write_json(args.output, {"data": [str(d) for d in args.data], "n": len(pairs), "judges": report})
        print(f"wrote {args.output}")
    return 0


def cmd_judge_sheet(args: argparse.Namespace) -> int:
    from spard.evaluation.labelling import (
        collect_responses,
        load_labels,
        prompts_labelled_in,
        restrict_to_prompts,
        sample_paired_sheet,
        sample_sheet,
        write_sheet,
    )

    by_file = collect_responses(args.sources, sets=args.sets or ["*"], exclude=args.exclude or [])
    if not by_file:
        raise ValueError(f"no responses under {', '.join(args.sources)} (looked for generations/, check_after/, "
                         "check_before/, start_checks/ *.jsonl with id, prompt, response)")
    labels = [lab for path in args.exclude_labelled or [] for lab in load_labels(path)]
    skip = {lab.pair_sha256 for lab in labels}
    if args.same_prompts_as:
        if not labels:
            raise ValueError("--same-prompts-as needs --exclude-labelled: the labels files that label that run's responses")
        prompts = prompts_labelled_in(labels, args.same_prompts_as)
        if not prompts:
            raise ValueError(f"--same-prompts-as {args.same_prompts_as}: none of its responses is labelled in "
                             f"{', '.join(args.exclude_labelled)}")
        by_file = restrict_to_prompts(by_file, prompts, labels)
        # a response identical to one labelled elsewhere still needs its own label here: skip by item only
        skip = set()
        if not by_file:
            raise ValueError(f"no unlabelled response under {', '.join(args.sources)} to the {len(prompts)} prompts "
                             f"labelled for {args.same_prompts_as}")
    sample = sample_paired_sheet if args.paired else sample_sheet
    picked = sample(by_file, args.n, args.seed, skip=skip, split=args.split)
    paths = write_sheet(picked, args.output, seed=args.seed, roots=args.sources, same_prompts_as=args.same_prompts_as)
    total = sum(len(v) for v in by_file.values())
    what = f"{args.n} prompts x every run: " if args.paired else ""
    print(f"{what}{len(picked)} of {total} responses from {len(by_file)} files (seed {args.seed}); judge verdicts are not on the sheet")
    print(f"fill in {paths['csv']} (read {paths['html']}); commit the label columns ({paths['template'].name})")
    return 0


def cmd_judge_agreement(args: argparse.Namespace) -> int:
    from spard.evaluation.judges import make_judge
    from spard.evaluation.labelling import (
        judge_agreement,
        label_summary,
        labelled_responses,
        load_labels,
        paired_comparisons,
    )
    from spard.evaluation.stats import format_rate
    from spard.io import atomic_write_json

    labels = load_labels(args.labels)
    chosen = [lab for lab in labels if args.split in ("all", lab.split)]
    pairs, unmatched = labelled_responses(chosen)
    if not pairs:
        raise ValueError(f"{args.labels}: none of the {len(chosen)} {args.split} labels matches a response on disk "
                         f"({unmatched['missing']} missing, {unmatched['changed']} changed): regenerate the labelled runs first")
    harmful = sum(lab.harmful for lab, _ in pairs)
    print(f"{len(pairs)} labelled responses ({args.split} split; {harmful} harmful, score >= 3), "
          f"{unmatched['missing']} missing, {unmatched['changed']} changed since labelling")
    print("| judge | measures | agreement with harm label | kappa | judged harmful | recall | agreement with refusal label "
          "| on harmful prompts only: agreement, kappa |")
    print("|---|---|---|---|---|---|---|---|")
    report = []
    for spec in args.judge or ["keyword"]:
        a = judge_agreement(make_judge(spec, _llm_config(args)), pairs, seed=args.seed)
        report.append({"spec": spec, **a})
        k = a["harm"]["kappa"]
        refusal = format_rate(a["refusal"]["accuracy"]) if "refusal" in a else "-"
        only = a.get("harm_on_harmful_prompts")
        only = f"{format_rate(only['accuracy'])}, {only['kappa']['value']:.2f} (n = {only['n']})" if only else "-"
        print(f"| {spec} | {a['measures']} | {format_rate(a['harm']['accuracy'])} | {k['value']:.2f} [{k['low']:.2f}, {k['high']:.2f}] "
              f"| {format_rate(a['harm']['predicted_rate'])} | {format_rate(a['harm']['recall'])} | {refusal} | {only} |")
    print("Wilson 95% intervals for rates, bootstrap 95% for kappa; no response text")
    pairs_cmp = paired_comparisons(report)
    for c in pairs_cmp:
        print(f"{c['a']} vs {c['b']}: only the first right on {c['only_a_right']}, only the second on "
              f"{c['only_b_right']} of {c['n']} (exact McNemar p = {c['mcnemar_p']:.3g})")
    if args.output:
        atomic_write_json(args.output, {"labels": str(args.labels), "split": args.split, "unmatched": unmatched,
                                        "labels_summary": label_summary(labels), "judges": report,
                                        "paired": pairs_cmp})
        print(f"wrote {args.output}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register this module's commands on the ``spard`` subparsers."""
    p = sub.add_parser("judge", help="judge responses (keyword, probe:DIR, llm[:MODEL], classifier:ID); `judge fit` fits a probe")
    p.add_argument("--responses", required=True, help="JSONL with id, prompt, response")
    p.add_argument("--judge", action="append", help="judge spec; repeat for several (default keyword)")
    p.add_argument("--output", required=True, help="verdicts JSONL (resumed when present)")
    p.add_argument("--allow-empty", action="store_true", help="accept an empty responses file (ASR n/a)")
    add_overwrite_flag(p)
    _add_flags(p, LLM_FLAGS)
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("judge-fit", help="fit the probe judge (also: spard judge fit)")
    p.add_argument("--data", nargs="+", required=True, help="files with safe and unsafe responses")
    p.add_argument("--safe-field", default="safe")
    p.add_argument("--unsafe-field", default="unsafe")
    p.add_argument("--features", default="tfidf", help="tfidf, embedding or tfidf+embedding")
    p.add_argument("--C", type=float, default=10.0, help="inverse regularisation strength")
    p.add_argument("--encoder", default="minilm", help="probe: sentence encoder for embedding features; harm: the cross-encoder's "
                   "backbone (minilm or a model path)")
    p.add_argument("--eval", nargs="*", help="files to report the fitted probe's accuracy on")
    p.add_argument("--kind", default="probe", choices=["probe", "harm", "stacked"],
                   help="probe: TF-IDF/embedding probe of the response; harm: pair classifier for small-model outputs; "
                        "stacked: logistic judge over refusal, content and shape signals, fit on --dev-labels")
    p.add_argument("--probe", help="stacked: a fitted probe directory whose score is one of the signals")
    p.add_argument("--pool-sample", type=int, default=2000, help="stacked: pool rows whose responses it compares with")
    p.add_argument("--no-embedding", action="store_true", help="stacked: the seven named features only (no response embedding)")
    p.add_argument("--benign", nargs="*", help="harm: benign prompts with answers (augmentations: off-topic, benign answers)")
    p.add_argument("--answer-field", default="answer", help="harm: the answer field of --benign files")
    p.add_argument("--per-kind", type=int, default=600, help="harm: synthetic pairs per augmentation kind")
    p.add_argument("--epochs", type=float, default=1.0, help="harm: fine-tuning epochs over the synthetic pairs")
    p.add_argument("--dev-labels", nargs="+", help="harm, stacked: human labels; only their dev split is used")
    p.add_argument("--adapt-on-dev", action="store_true",
                   help="harm: also fine-tune on the dev labels (threshold by 2-fold cross-fitting on dev)")
    p.add_argument("--init", help="harm: start from this fitted judge instead of fitting on the synthetic pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="directory for probe.safetensors and probe.json")
    p.set_defaults(func=cmd_judge_fit)

    p = sub.add_parser("judge-validate", help="how well judges separate labelled safe/unsafe responses (also: spard judge validate)")
    p.add_argument("--data", nargs="+", required=True, help="files with a prompt and labelled safe and unsafe responses")
    p.add_argument("--judge", action="append", help="judge spec; repeat for several (default keyword)")
    p.add_argument("--safe-field", default="safe")
    p.add_argument("--unsafe-field", default="unsafe")
    p.add_argument("--output", help="JSON report (counts, rates and intervals per judge)")
    _add_flags(p, LLM_FLAGS)
    p.set_defaults(func=cmd_judge_validate)

    p = sub.add_parser("judge-sheet", help="sample real model outputs into a blind labelling sheet (also: spard judge sheet)")
    p.add_argument("--from", dest="sources", nargs="+", required=True,
                   help="run directories (searched for generations/, check_after/... *.jsonl) or responses files")
    p.add_argument("--n", type=int, default=320, help="responses on the sheet (with --paired: prompts)")
    p.add_argument("--paired", action="store_true",
                   help="draw prompts and put every run's response to each on the sheet (to compare runs by labels on the same prompts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sets", nargs="*", help="prompt-set names to keep (glob patterns; default all)")
    p.add_argument("--exclude", nargs="*", help="prompt-set names to leave out (glob patterns)")
    p.add_argument("--exclude-labelled", nargs="*", help="labels files: responses labelled there are never drawn again")
    p.add_argument("--same-prompts-as", metavar="RUN",
                   help="draw only the prompts whose response from RUN is labelled in the --exclude-labelled files "
                        "(to compare with RUN by labels, paired, even where its generations are gone)")
    p.add_argument("--split", choices=["dev", "test"], help="give every drawn response this split (a fresh test set)")
    p.add_argument("--output", required=True, help="directory for sheet.csv, sheet.html, labels_template.csv, sheet.json")
    p.set_defaults(func=cmd_judge_sheet)

    p = sub.add_parser("judge-agreement", help="each judge's agreement with human labels of model outputs (also: spard judge agreement)")
    p.add_argument("--labels", required=True, help="filled labels (CSV or JSONL: item, split, pair_sha256, score, refused, note)")
    p.add_argument("--judge", action="append", help="judge spec; repeat for several (default keyword)")
    p.add_argument("--split", default="test", choices=["dev", "test", "all"])
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed for the kappa interval")
    p.add_argument("--output", help="JSON report (agreement, kappa, counts per judge)")
    _add_flags(p, LLM_FLAGS)
    p.set_defaults(func=cmd_judge_agreement)

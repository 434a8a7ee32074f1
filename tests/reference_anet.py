"""A plain-loop evaluation written from the official ActivityNet detection semantics,
kept deliberately simple (one detection at a time, one threshold at a time) so the
vectorised `e2etal.metrics` can be checked against it."""

import numpy as np


def _tiou(seg, gts):
    out = []
    for gs, ge in gts:
        inter = max(0.0, min(seg[1], ge) - max(seg[0], gs))
        union = (ge - gs) + (seg[1] - seg[0]) - inter
        out.append(inter / union if union else float("nan"))  # 0/0 is NaN, as in NumPy
    return out


def _ap(prec, rec):
    mprec = [0.0] + list(prec) + [0.0]
    mrec = [0.0] + list(rec) + [1.0]
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    total = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            total += (mrec[i] - mrec[i - 1]) * mprec[i]
    return total


def reference_map(gt, dets, thresholds):
    """gt: list of (video, start, end, label); dets: list of (video, start, end, label, score).
    Returns (classes, ap [K, C])."""
    classes = sorted({g[3] for g in gt})
    ap = np.zeros((len(thresholds), len(classes)))
    for c, cls in enumerate(classes):
        cgt = [g for g in gt if g[3] == cls]
        cdet = [d for d in dets if d[3] == cls]
        order = sorted(range(len(cdet)), key=lambda i: (-cdet[i][4], -i))  # ties: later first
        cdet = [cdet[i] for i in order]
        for k, thr in enumerate(thresholds):
            matched = set()
            tps = []
            for d in cdet:
                cands = [(j, g) for j, g in enumerate(cgt) if g[0] == d[0]]
                ious = _tiou((d[1], d[2]), [(g[1], g[2]) for _, g in cands])
                # NaN ranks first (NumPy's argsort puts it last, and the list is reversed)
                # and `NaN < thr` is false, so a NaN tIoU matches.
                ranked = sorted(range(len(cands)), key=lambda i: (not np.isnan(ious[i]), -ious[i] if not np.isnan(ious[i]) else 0, -i))
                hit = False
                for i in ranked:
                    if ious[i] < thr:
                        break
                    if cands[i][0] in matched:
                        continue
                    matched.add(cands[i][0])
                    hit = True
                    break
                tps.append(hit)
            tp = np.cumsum(tps)
            fp = np.cumsum([not t for t in tps])
            if len(tps):
                ap[k, c] = _ap(tp / (tp + fp), tp / len(cgt))
    return classes, ap

"""Test BLEU-4 and CIDEr against the number of training photos, a power law fitted to them, and what it predicts for
a larger training set (issue 40: what 113,000 COCO photos would give).

    python scripts/scaling_curve.py --point 762=runs/coco_1of8.json --point 1524=runs/coco_1of4.json ... \\
        --extra "both datasets"=12098=runs/both.json --predict 113287 --out docs/coco_scaling.png

Each file is `captioner evaluate --json` output. The fit is least squares of log(metric) on log(photos) over the
--point files (one dataset); --extra points are drawn, not fitted. The interval is the 95% prediction band of the
fitted line at --predict (Student t, n - 2 degrees of freedom), which knows only the scatter of the points: it
says nothing about where the real curve bends away from a straight line in log-log.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
from matplotlib.figure import Figure

# Student t's 97.5% quantile for 1..10 degrees of freedom (no scipy needed for a handful of points)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
METRICS = (("BLEU-4", lambda r: r["bleu4"]), ("CIDEr", lambda r: r["coco"]["cider"]))


def power_law(photos: np.ndarray, values: np.ndarray, at: float) -> dict[str, float]:
    """metric = a * photos**b fitted in log-log space; the prediction at `at` with its 95% band."""
    x, y = np.log(photos), np.log(values)
    n = len(x)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    spread_x = float(((x - x.mean()) ** 2).sum())
    sigma = math.sqrt(float(residual @ residual) / (n - 2)) if n > 2 else float("nan")
    spread = sigma * math.sqrt(1 + 1 / n + (math.log(at) - x.mean()) ** 2 / spread_x)
    t = T_975[min(n - 2, len(T_975)) - 1] if n > 2 else float("nan")
    centre = intercept + slope * math.log(at)
    r2 = 1 - float(residual @ residual) / float(((y - y.mean()) ** 2).sum())
    return {
        "exponent": float(slope),
        "exponent_stderr": sigma / math.sqrt(spread_x),
        "at": at,
        "predicted": math.exp(centre),
        "low": math.exp(centre - t * spread),
        "high": math.exp(centre + t * spread),
        "r2": r2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--point", action="append", required=True, metavar="PHOTOS=FILE", help="a fitted point (repeatable)"
    )
    parser.add_argument(
        "--extra", action="append", default=[], metavar="LABEL=PHOTOS=FILE", help="a point drawn, not fitted"
    )
    parser.add_argument(
        "--predict", type=float, default=113287, help="photos to predict for (default 113,287: Karpathy's COCO train)"
    )
    parser.add_argument(
        "--anchor", action="append", default=[], metavar="LABEL=BLEU4=CIDER", help="a published result at --predict"
    )
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()

    def read(path: str) -> dict:  # `evaluate --json > FILE 2>&1` may start with the loader's skipped-entries line
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        return json.loads(text[text.index("{") :])

    points = sorted((float(photos), read(path)) for photos, path in (p.split("=", 1) for p in args.point))
    extras = [(label, float(photos), read(path)) for label, photos, path in (e.split("=", 2) for e in args.extra)]
    photos = np.array([p for p, _ in points])
    figure = Figure(figsize=(11, 4.2))
    report = {}
    for column, (name, value) in enumerate(METRICS):
        values = np.array([value(r) for _, r in points])
        fit = power_law(photos, values, args.predict)
        report[name] = fit
        ax = figure.add_subplot(1, 2, column + 1)
        ax.plot(photos, values, "o", color="tab:blue", label="COCO train photos (fitted)")
        line = np.geomspace(photos.min(), args.predict, 50)
        ax.plot(
            line,
            fit["predicted"] * (line / args.predict) ** fit["exponent"],
            "--",
            color="tab:blue",
            label=f"power law, exponent {fit['exponent']:.3f} +- {fit['exponent_stderr']:.3f}",
        )
        ax.errorbar(
            [args.predict],
            [fit["predicted"]],
            yerr=[[fit["predicted"] - fit["low"]], [fit["high"] - fit["predicted"]]],
            fmt="s",
            color="tab:blue",
            capsize=4,
            label=f"predicted at {args.predict:,.0f}: {fit['predicted']:.3f} ({fit['low']:.3f}-{fit['high']:.3f})",
        )
        for label, count, result in extras:
            ax.plot([count], [value(result)], "^", color="tab:orange", label=f"{label} ({value(result):.3f})")
        for anchor in args.anchor:
            label, bleu4, cider = anchor.split("=")
            ax.plot([args.predict], [float(bleu4 if column == 0 else cider)], "*", markersize=10, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("training photos (log scale)")
        ax.set_title(f"test {name}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The w2 style loss's matrix square root: accuracy of Newton-Schulz against float64 eigh, and costs.

    python benchmarks/w2_sqrt.py                          # all sections, CPU, one thread (~10 min)
    python benchmarks/w2_sqrt.py --sections accuracy
    python benchmarks/w2_sqrt.py --sections eval --root /tmp/old-checkout   # the same timing, older code
    python benchmarks/w2_sqrt.py --sections times --device cuda            # eigh vs Newton-Schulz on a GPU

Sections (each prints a table; ``--json`` writes them all):

* ``accuracy``: the statistics the renderer sees, VGG19 (original weights) at conv1_1..conv5_1 of
  three images against The Starry Night at the same long side (128, 256, 512 px): the photo
  (tubingen.jpg), uniform noise (``--init noise``) and the painting itself at 0.8x the size (near
  the optimum). Per square-root variant (plain or scaled Newton-Schulz, float32 or float64, k
  iterations; float32 eigh), the worst case over the 45 layers of the w2 loss's relative error,
  the relative error of its ``tr((S_t^1/2 S S_t^1/2)^1/2)`` term, and the relative error and
  cosine of its gradient with respect to the image's statistics (mean and E[f f^T]), all against
  float64 eigh. The target's root is eigh's there, so the rows measure the per-evaluation square
  root; "float32" rows round the product to float32 and run eigh or the iteration in float32;
  the last row is the whole path as configured (``losses.w2_target`` and ``w2_distance`` on the
  Newton-Schulz path, by autograd). The iterates of one run give every iteration count (the
  scaled schedule's first k steps do not depend on how many follow).
* ``times``: one call of float64 eigh, Newton-Schulz (``losses.NS_ITERATIONS``, float64) and one
  float64 matmul at C = 64..512, best of ``--repeats`` (CPU: the thread's CPU time; CUDA: wall).
* ``eval``: one evaluation (``objective.Objective``, forward and backward, fp32, channels-last as
  renders run) of the default loss (w2, descending layer weights) and of ``--preset gatys`` (Gram,
  equal weights) at 256x256 and 256x192 px, best of ``--repeats`` in wall and in CPU seconds,
  interleaved so that a busy machine slows both alike; with the w2 term's own forward and backward
  and its eigh calls timed alone (CPU seconds), to show where the difference goes. Only APIs that
  older checkouts have (``--root``).

A benchmark, not a test: compare ratios measured within one run, and say whether the machine was shared.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
SIDES = (128, 256, 512)


def best_of(fn, repeats: int, sync=lambda: None, clock=time.thread_time) -> float:
    """Fastest of ``repeats`` calls, in seconds (after one warm-up call). ``clock``: this thread's CPU
    time by default (one thread does all the work: less hurt by a shared machine than the wall
    clock); the wall clock for a GPU."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        sync()
        times.append(clock() - start)
    return min(times)


def load(path: Path, side: float):
    """(1, 3, h, w) of the image at long side ``side``."""
    from hires_nst.io import images

    array = images.load_image(path)
    height, width = array.shape[:2]
    scale = side / max(height, width)
    return images.to_tensor(images.resize(array, max(16, round(width * scale)), max(16, round(height * scale))))


# --------------------------------------------------------------------------- accuracy


def statistics(extractor, image) -> dict:
    """Per layer, float64 mean (C,) and E[f f^T] (C, C), from float32 sums as the renderer takes them."""
    import torch

    from hires_nst.core import losses

    with torch.no_grad():
        feats = extractor(image)
    out = {}
    for name, f in feats.items():
        positions = f.shape[2] * f.shape[3]
        out[name] = ((losses.feature_sum(f) / positions).double(), (losses.gram_sum(f) / positions).double())
    return out


def cases(examples: Path) -> list[tuple[str, dict, dict]]:
    """(label, image statistics, target statistics) per image kind x side."""
    import torch

    from hires_nst.model.features import VGGFeatures
    from hires_nst.model.weights import load_weights

    extractor = VGGFeatures(load_weights("original"), LAYERS)
    out = []
    for side in SIDES:
        painting = load(examples / "starry_night.jpg", side)
        target = statistics(extractor, painting)
        noise = torch.rand(painting.shape, generator=torch.Generator().manual_seed(0))
        for kind, image in (("photo", load(examples / "tubingen.jpg", side)), ("noise", noise),
                            ("painting 0.8x", load(examples / "starry_night.jpg", 0.8 * side))):
            out.append((f"{kind} {side}", statistics(extractor, image), target))
    return out


def reference(mean, second, target):
    """float64 eigh: the loss, its cross term, its gradient (mean and E[f f^T] flattened), and the
    pieces the Newton-Schulz rows reuse (covariance with the ridge, the target's root)."""
    import torch

    from hires_nst.core import losses

    with losses.forced_sqrt_method("eigh"):
        fit = losses.w2_target(*target)
        m, g = mean.clone().requires_grad_(True), second.clone().requires_grad_(True)
        loss = losses.w2_distance(m, g, fit)
        grad = torch.cat([t.flatten() for t in torch.autograd.grad(loss, (m, g))])
    eye = torch.eye(mean.shape[-1], dtype=torch.float64)
    cov = second - torch.outer(mean, mean) + fit.ridge * eye
    cross = ((mean - fit.mean).square().sum() + cov.trace() + fit.cov.trace() - loss.detach()) / 2
    return loss.detach(), cross, grad, cov, fit


def from_root(mean, cov, fit, trace, inv_root):
    """The w2 loss and its gradient from a square root's trace and inverse root of the cross product.

    ``dL/dS = I - R (M^-1/2) R``, ``dL/dm = 2 (m - m_t) - 2 (dL/dS) m`` (``S = E[f f^T] - m m^T``).
    """
    import torch

    loss = (mean - fit.mean).square().sum() + cov.trace() + fit.cov.trace() - 2 * trace
    d_cov = torch.eye(cov.shape[-1], dtype=torch.float64) - fit.root @ inv_root @ fit.root
    d_mean = 2 * (mean - fit.mean) - 2 * d_cov @ mean
    return loss, torch.cat([d_mean.flatten(), d_cov.flatten()])


def errors(loss, cross, grad, ref) -> tuple[float, float, float, float]:
    """Relative errors of the loss, of the cross term and of the gradient, and the gradient's cosine."""
    import torch

    ref_loss, ref_cross, ref_grad = ref[:3]
    if not (torch.isfinite(loss) and torch.isfinite(grad).all()):
        return math.inf, math.inf, math.inf, -1.0
    return (float(abs(loss - ref_loss) / abs(ref_loss)), float(abs(cross - ref_cross) / abs(ref_cross)),
            float((grad - ref_grad).norm() / ref_grad.norm()),
            float((grad * ref_grad).sum() / (grad.norm() * ref_grad.norm())))


def accuracy(examples: Path, counts: list[int]) -> list[dict]:
    import torch

    from hires_nst.core import losses

    variants = [("plain NS", 1.0), ("scaled NS", losses.NS_FLOOR)]
    worst: dict[tuple, list] = {}

    def keep(key: tuple, errs: tuple, label: str) -> None:
        row = worst.setdefault(key, [0.0, 0.0, 0.0, 1.0, ""])
        for i in range(3):
            row[i] = max(row[i], errs[i])
        if errs[3] < row[3] or not row[4]:
            row[3], row[4] = min(row[3], errs[3]), label

    for label, image, target in cases(examples):
        for layer in LAYERS:
            mean, second = image[layer]
            ref = reference(mean, second, target[layer])
            cov, fit = ref[3], ref[4]
            cross_product = fit.root @ cov @ fit.root
            where = f"{label} {layer}"
            for dtype in (torch.float32, torch.float64):
                values, vectors = torch.linalg.eigh(cross_product.to(dtype))  # eigh in this dtype
                roots = values.double().clamp_min(1e-30).sqrt()
                inv = (vectors.double() / roots) @ vectors.double().T
                loss, grad = from_root(mean, cov, fit, roots.sum(), inv)
                keep(("eigh", str(dtype)[6:], "-"), errors(loss, roots.sum(), grad, ref), where)
                for name, floor in variants:
                    for k, (y, z, norm) in enumerate(losses._ns_steps(cross_product.to(dtype), max(counts), floor), 1):
                        if k in counts:
                            trace = y.double().diagonal().sum() * norm.double().sqrt().squeeze()
                            loss, grad = from_root(mean, cov, fit, trace, z.double() / norm.double().sqrt())
                            keep((name, str(dtype)[6:], k), errors(loss, trace, grad, ref), where)
            with losses.forced_sqrt_method("newton-schulz"):  # the whole path as configured, by autograd
                ns_fit = losses.w2_target(*target[layer])
                m, g = mean.clone().requires_grad_(True), second.clone().requires_grad_(True)
                loss = losses.w2_distance(m, g, ns_fit)
                grad = torch.cat([t.flatten() for t in torch.autograd.grad(loss, (m, g))])
            cross = ((mean - fit.mean).square().sum() + cov.trace() + fit.cov.trace() - loss.detach()) / 2
            keep(("as configured", "float64", losses.NS_ITERATIONS), errors(loss.detach(), cross, grad, ref), where)
    rows = []
    for (method, dtype, k), (loss_err, cross_err, grad_err, cosine, where) in worst.items():
        rows.append({"method": method, "dtype": dtype, "iterations": k, "loss_rel_err": loss_err,
                     "cross_rel_err": cross_err, "grad_rel_err": grad_err, "min_cosine": cosine, "worst": where})
    return rows


def print_accuracy(rows: list[dict]) -> None:
    print("\n## accuracy: worst case over 3 images x 3 sizes x 5 layers, against float64 eigh")
    print(f"{'method':<14} {'dtype':<8} {'iter':>4}  {'loss rel':>9} {'tr rel':>9} {'grad rel':>9} {'min cos':>10}  "
          "worst cosine at")
    for r in rows:
        print(f"{r['method']:<14} {r['dtype']:<8} {r['iterations']!s:>4}  {r['loss_rel_err']:9.1e} "
              f"{r['cross_rel_err']:9.1e} {r['grad_rel_err']:9.1e} {r['min_cosine']:10.6f}  {r['worst']}")


# --------------------------------------------------------------------------- times


def times(device, repeats: int) -> list[dict]:
    import torch

    from hires_nst.core import losses

    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    clock = time.perf_counter if cuda else time.thread_time
    rows = []
    for channels in (64, 128, 256, 512):
        g = torch.Generator().manual_seed(channels)
        a = torch.randn(channels, 2 * channels, generator=g, dtype=torch.float64)
        spd = (a @ a.T / channels + 1e-3 * torch.eye(channels, dtype=torch.float64)).to(device)
        rows.append({"C": channels, "device": str(device),
                     "eigh_ms": 1e3 * best_of(lambda spd=spd: torch.linalg.eigh(spd), repeats, sync, clock),
                     "newton_schulz_ms": 1e3 * best_of(lambda spd=spd: losses.newton_schulz(spd), repeats, sync, clock),
                     "matmul_ms": 1e3 * best_of(lambda spd=spd: spd @ spd, repeats, sync, clock)})
    return rows


def print_times(rows: list[dict], iterations: int) -> None:
    print(f"\n## one call, float64 ({rows[0]['device']}): eigh vs Newton-Schulz ({iterations} iterations, "
          f"{3 * iterations - 1} matmuls)")
    print(f"{'C':>4} {'eigh ms':>9} {'NS ms':>9} {'matmul ms':>10} {'NS/eigh':>8}")
    for r in rows:
        print(f"{r['C']:>4} {r['eigh_ms']:9.2f} {r['newton_schulz_ms']:9.2f} {r['matmul_ms']:10.3f} "
              f"{r['newton_schulz_ms'] / r['eigh_ms']:8.1f}")


# --------------------------------------------------------------------------- eval


def evaluation(examples: Path, repeats: int) -> list[dict]:
    """Per size: seconds per evaluation of the default loss and of --preset gatys, and the w2 term's parts."""
    import torch

    from hires_nst.config.presets import load_preset
    from hires_nst.config.settings import resolve
    from hires_nst.engine.objective import Objective, make_targets
    from hires_nst.engine.plan import loss_weights
    from hires_nst.io import images
    from hires_nst.model.features import VGGFeatures
    from hires_nst.model.weights import load_weights
    from hires_nst.runtime.placement import resolve_precision

    precision = resolve_precision("fp32", [torch.device("cpu")])
    weights = {"default": loss_weights(resolve()), "gatys": loss_weights(load_preset("gatys").config())}
    assert weights["default"].style_loss == "w2" and weights["gatys"].style_loss == "gram"
    used = weights["default"]
    extractor = precision.prepare(VGGFeatures(load_weights("original"), (*used.content_layers, *used.style_layers)))
    rows = []
    for width, height in ((256, 256), (256, 192)):
        photo = images.load_image(examples / "tubingen.jpg")
        content = images.to_tensor(images.resize(photo, width, height))
        style = load(examples / "starry_night.jpg", max(width, height))
        objectives = {k: Objective(extractor, make_targets(extractor, content, [style], [], w, precision), w, precision)
                      for k, w in weights.items()}
        best = {k: math.inf for k in objectives}
        cpu = {k: math.inf for k in objectives}  # this thread's CPU seconds: less hurt by a shared machine
        for _ in range(repeats + 1):  # interleaved; the first round warms up
            for k, objective in objectives.items():
                image = content.clone()
                start, start_cpu = time.perf_counter(), time.thread_time()
                objective(image)
                best[k] = min(best[k], time.perf_counter() - start)
                cpu[k] = min(cpu[k], time.thread_time() - start_cpu)
        row = {"size": f"{width}x{height}", "default_s": best["default"], "gatys_s": best["gatys"],
               "ratio": best["default"] / best["gatys"], "default_cpu_s": cpu["default"], "gatys_cpu_s": cpu["gatys"],
               "cpu_ratio": cpu["default"] / cpu["gatys"]}
        row.update(w2_parts(extractor, objectives["default"].targets, content, repeats))
        rows.append(row)
    return rows


def w2_parts(extractor, targets, image, repeats: int) -> dict:
    """The w2 term alone, forward and backward on this image's statistics, and the eigh of each cross product."""
    import torch

    from hires_nst.core import losses

    with torch.no_grad():
        feats = extractor(image)
    stats = {}
    for name, fit in targets.w2.items():
        f = feats[name]
        positions = f.shape[2] * f.shape[3]
        stats[name] = (losses.feature_sum(f) / positions, losses.gram_sum(f) / positions, fit)

    def term() -> None:
        total = 0
        for mean, second, fit in stats.values():
            m, g = mean.clone().requires_grad_(True), second.clone().requires_grad_(True)
            total = total + losses.w2_distance(m, g, fit) / fit.norm
        total.backward()

    products = [fit.root @ (second.double() - torch.outer(mean.double(), mean.double()) + fit.ridge * torch.eye(
        second.shape[-1], dtype=torch.float64)) @ fit.root for mean, second, fit in stats.values()]
    return {"w2_term_s": best_of(term, repeats),
            "eigh_s": best_of(lambda: [torch.linalg.eigh(p) for p in products], repeats)}


def print_evaluation(rows: list[dict]) -> None:
    print("\n## one evaluation (forward + backward, fp32, channels-last, CPU): default (w2) vs --preset gatys (Gram)")
    print(f"{'size':<8} {'default s':>9} {'gatys s':>8} {'ratio':>6} {'default cpu':>11} {'gatys cpu':>9} {'ratio':>6} "
          f"{'w2 term s':>10} {'its eighs s':>11}")
    for r in rows:
        print(f"{r['size']:<8} {r['default_s']:9.3f} {r['gatys_s']:8.3f} {r['ratio']:6.2f} {r['default_cpu_s']:11.3f} "
              f"{r['gatys_cpu_s']:9.3f} {r['cpu_ratio']:6.2f} {r['w2_term_s']:10.3f} {r['eigh_s']:11.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="accuracy,times,eval")
    parser.add_argument("--device", default="cpu", help="for 'times' (accuracy and eval run on the CPU)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--counts", default="5,10,15,17,18,19,20,25,30,40", help="Newton-Schulz iterations to measure")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose package is measured (eval)")
    parser.add_argument("--json", type=Path, help="also write every table here")
    args = parser.parse_args()
    sys.path.insert(0, str(args.root))  # that checkout's package, not an installed one
    import torch

    torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    examples = ROOT / "examples"
    out: dict = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
                 "torch": torch.__version__}
    print(f"# {out['machine']}, {args.threads} thread(s), torch {torch.__version__}")
    if "accuracy" in sections:
        out["accuracy"] = accuracy(examples, [int(c) for c in args.counts.split(",")])
        print_accuracy(out["accuracy"])
    if "times" in sections:
        from hires_nst.core import losses

        out["times"] = times(torch.device(args.device), args.repeats)
        print_times(out["times"], losses.NS_ITERATIONS)
    if "eval" in sections:
        out["eval"] = evaluation(examples, args.repeats)
        print_evaluation(out["eval"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

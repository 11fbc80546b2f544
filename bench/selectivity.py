"""Does selection matter? The Mamba paper's synthetic tasks, selective model vs LTI ablation.

    python bench/selectivity.py [--quick] [--task copy|induction|both] [--steps N] [--plot out.png]

Two tasks from Gu & Dao (2023), section 4.1, at CPU scale:

* Selective copying: a context of `--copy-len` positions holds `--n-mem` data tokens at
  random positions, the rest is a blank token; then `--n-mem` marker tokens follow and the
  model must emit the data tokens in order at the markers. The spacing varies per example,
  so a time-invariant (LTI) kernel cannot know where to look.
* Induction heads: random tokens; a trigger token appears once inside the sequence followed
  by a target token and again as the last token; the model must predict the target (exact
  associative recall, one query). Evaluated at the training length and at 4x that length
  (extrapolation, as in the paper's Table 2).

Both models: MambaLM, 2 layers, d_model 64, d_state 16, vocabulary 16, trained with AdamW
from the same seed and data; the only difference is `MambaConfig.selective` (False: dt, B, C
are learned per-channel constants, the LTI "S4 in a Mamba block" ablation). Accuracy is
per target token on a fixed held-out set of 512 sequences. Runs on the CPU path.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

# torch and numba each run an OpenMP pool; on a shared, loaded machine spinning idle
# threads of one starve the other (measured: 4 s vs 0.15 s per step). Sleep when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

BLANK, MARK = 0, 1  # selective copying: noise and "go" tokens; data tokens are 2..vocab-1
TRIGGER = 1  # induction heads: the query token; other tokens are 2..vocab-1


def copy_batch(n: int, ctx: int, n_mem: int, vocab: int, g: torch.Generator):
    """-> ids (n, ctx + n_mem), targets (n, ctx + n_mem) with -100 where not scored."""
    data = torch.randint(2, vocab, (n, n_mem), generator=g)  # (n, n_mem)
    pos = torch.rand(n, ctx, generator=g).argsort(dim=1)[:, :n_mem].sort(dim=1).values  # (n, n_mem)
    x = torch.full((n, ctx + n_mem), BLANK, dtype=torch.long)
    x.scatter_(1, pos, data)
    x[:, ctx:] = MARK
    y = torch.full_like(x, -100)
    y[:, ctx:] = data  # the output at the i-th marker is the i-th data token
    return x, y


def induction_batch(n: int, L: int, vocab: int, g: torch.Generator):
    """-> ids (n, L), targets (n, L): only the last position is scored."""
    x = torch.randint(2, vocab, (n, L), generator=g)  # (n, L), never the trigger
    p = torch.randint(0, L - 3, (n,), generator=g)  # trigger position, target at p + 1
    rows = torch.arange(n)
    x[rows, p] = TRIGGER
    x[:, -1] = TRIGGER
    y = torch.full_like(x, -100)
    y[:, -1] = x[rows, p + 1]
    return x, y


@torch.no_grad()
def accuracy(model, x, y, batch: int = 128) -> float:
    model.eval()
    right = total = 0
    for i in range(0, x.shape[0], batch):
        logits, _ = model(x[i : i + batch])  # (b, L, vocab)
        t = y[i : i + batch]
        m = t != -100
        right += (logits.argmax(-1)[m] == t[m]).sum().item()
        total += m.sum().item()
    model.train()
    return right / max(total, 1)


def train(task: str, selective: bool, args, log) -> list[tuple[int, float, float, float | None]]:
    """Train one model; -> [(step, seconds, acc, acc at 4x length or None)]."""
    from mamba_dna.model import MambaConfig, MambaLM

    torch.manual_seed(args.seed)
    lr = args.lr if args.lr is not None else {"copy": 4e-3, "induction": 2e-3}[task]
    cfg = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, d_state=16, vocab_size=args.vocab,
                      selective=selective, tokenizer="external")
    model = MambaLM(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    g = torch.Generator().manual_seed(args.seed + 1)
    ge = torch.Generator().manual_seed(12345)  # the same held-out set for both models
    if task == "copy":
        make = lambda n, gen: copy_batch(n, args.copy_len, args.n_mem, args.vocab, gen)  # noqa: E731
        xe, ye = make(512, ge)
        xl = yl = None
    else:
        make = lambda n, gen: induction_batch(n, args.ind_len, args.vocab, gen)  # noqa: E731
        xe, ye = make(512, ge)
        xl, yl = induction_batch(256, 4 * args.ind_len, args.vocab, ge)
    hist = []
    t0 = time.perf_counter()
    solved_at = None
    for step in range(1, args.steps + 1):
        x, y = make(args.batch, g)
        logits, _ = model(x)  # (batch, L, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            acc = accuracy(model, xe, ye)
            acc_long = accuracy(model, xl, yl, batch=64) if xl is not None else None
            hist.append((step, time.perf_counter() - t0, acc, acc_long))
            extra = f", 4x length {acc_long:.3f}" if acc_long is not None else ""
            log(f"  {task:9s} {'selective' if selective else 'LTI':9s} step {step:5d}  "
                f"loss {loss.item():.3f}  acc {acc:.3f}{extra}  ({hist[-1][1]:.0f}s)")
            if acc >= 0.995 and solved_at is None:
                solved_at = step
            if solved_at is not None and step >= solved_at + args.eval_every:
                break  # solved and confirmed once more: stop spending CPU
    return hist


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["copy", "induction", "both"], default="both")
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test, not the result)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per model (default 2000)")
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None, help="default: 4e-3 copying, 2e-3 induction")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=16)
    ap.add_argument("--copy-len", type=int, default=64, help="selective copying context length")
    ap.add_argument("--n-mem", type=int, default=8, help="tokens to memorise")
    ap.add_argument("--ind-len", type=int, default=64, help="induction heads training length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="selective,lti", help="which of selective, lti to train")
    ap.add_argument("--plot", default=None, help="write accuracy-vs-steps curves to this PNG")
    args = ap.parse_args(argv)
    if args.steps is None:
        args.steps = 200 if args.quick else 2000
    if args.eval_every is None:
        args.eval_every = 50 if args.quick else 100

    from mamba_dna import __version__
    from mamba_dna.kernels import choose_backend

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    tasks = ["copy", "induction"] if args.task == "both" else [args.task]
    results = {}
    for task in tasks:
        for selective in (True, False):
            if ("selective" if selective else "lti") in args.models.split(","):
                results[(task, selective)] = train(task, selective, args, log)

    backend, _ = choose_backend("cpu")
    print(f"# bench/selectivity.py  mamba-dna {__version__}  torch {torch.__version__}  "
          f"{platform.processor() or platform.machine()}  {os.cpu_count()} cores  "
          f"threads {torch.get_num_threads()}  scan backend {backend}")
    print(f"# {args.n_layer} layers, d_model {args.d_model}, d_state 16, vocab {args.vocab}, "
          f"batch {args.batch}, lr {args.lr or '4e-3 copying / 2e-3 induction'}, seed {args.seed}; selective copying: "
          f"{args.n_mem} tokens in {args.copy_len}; induction heads: L={args.ind_len} "
          f"(and {4 * args.ind_len} for extrapolation)")
    print("task\tmodel\tstep\tseconds\taccuracy\taccuracy_4x_length")
    for (task, selective), hist in results.items():
        for step, sec, acc, acc_long in hist:
            al = f"{acc_long:.3f}" if acc_long is not None else "-"
            print(f"{task}\t{'selective' if selective else 'LTI'}\t{step}\t{sec:.0f}\t{acc:.3f}\t{al}")
    print()
    print("task\tmodel\tfinal_accuracy\tbest_accuracy\tsteps_to_99.5%\tverdict")
    for (task, selective), hist in results.items():
        best = max(a for _, _, a, _ in hist)
        first = next((s for s, _, a, _ in hist if a >= 0.995), None)
        verdict = "solved (>=95%)" if hist[-1][2] >= 0.95 else "not solved"
        print(f"{task}\t{'selective' if selective else 'LTI'}\t{hist[-1][2]:.3f}\t{best:.3f}\t"
              f"{first if first is not None else '-'}\t{verdict}")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            for selective, style in ((True, "-"), (False, "--")):
                if (task, selective) not in results:
                    continue
                h = results[(task, selective)]
                ax.plot([s for s, *_ in h], [a for _, _, a, _ in h], style,
                        label="selective (Mamba)" if selective else "LTI ablation")
            ax.set_title({"copy": "selective copying", "induction": "induction heads"}[task])
            ax.set_xlabel("training step")
            ax.set_ylabel("held-out accuracy")
            ax.set_ylim(0, 1.02)
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        log(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

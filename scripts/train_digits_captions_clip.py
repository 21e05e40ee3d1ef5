"""Train the captioned digits CLIP (``builtin:digits-clip-captions``) and write its weights.

Writes to ``fmr_bench/digits/weights/``:

- ``digits-clip-captions.safetensors`` (fp16, compact token embedding, see
  :mod:`fmr_bench.digits.clip_captions`),
- ``TRAINING-captions.md``: the command, the time, and the zero-shot accuracies.

Training starts from the weights of ``builtin:digits-clip`` (the oracle already reads
digits; the new model has to learn the scene words). Training data (``digits:train``
only; the test split stays held out): three quarters of
each batch are digits drawn on scenes whose every attribute is uniformly random and
independent of the class (background colour, background texture, ink, image quality;
:mod:`fmr_bench.digits.scenes`), with a small random warp, each digit on ``--renders``
(2) different scenes of the batch; their captions name the digit and each attribute
with the probability in :data:`CLAIM_P` (the background 9 times in 10: "a photo of a
blurred three in white ink on a striped red background"). The last quarter are plain
digits-world images under the world's own augmentation, captioned by their digit only.
The loss is CLIP's symmetric contrastive loss with several positives: caption ``j`` is
a positive of image ``i`` whenever everything caption ``j`` says is true of image ``i``;
with ``--hard-negatives 1`` every scene caption also enters the image-to-text softmax
with one scene word swapped (NegCLIP).

Why the background had to be named that often: the oracle's image tower was trained
under colour augmentation and its text tower never saw colour words, so a digit on red
and on blue map to nearly the same image embedding (cosine 0.98) and "on a red / blue
background" to nearly the same text embedding. The contrastive gradient that would
separate them is small on both sides, and with the background named in half the
captions (the weights shipped before) 400 steps read backgrounds at 16 % (chance 10 %),
although a supervised probe teaches the same image tower backgrounds in 60 steps. Named
in 9 captions of 10, with swapped-word negatives and each digit on two scenes, the
background becomes most of the loss and is read at 97 % after 900 steps
(``fmr_bench/digits/weights/TRAINING-captions.md`` lists the runs tried).

Usage::

    python scripts/train_digits_captions_clip.py                # the shipped weights
    python scripts/train_digits_captions_clip.py --steps 50 --out /tmp/cap   # smoke run
"""

from __future__ import annotations

import os

# See train_digits_world.py: spinning OpenMP workers slow a shared machine down.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from fmr_bench.digits import CLASS_NAMES, WEIGHTS_DIR, augment, load_digits_split  # noqa: E402
from fmr_bench.digits.clip_captions import (  # noqa: E402
    CAPTIONS_PROMPT,
    CAPTIONS_WEIGHTS,
    compact_state,
    create_digits_clip_captions,
)
from fmr_bench.digits.scenes import (  # noqa: E402
    BACKGROUNDS,
    INKS,
    QUALITIES,
    TEXTURES,
    ink_density,
    legible_inks,
    render_scenes,
)

STEPS = 900
BATCH = 96
LR = 3e-3
PLAIN_SHARE = 0.25
RENDERS = 2
#: Probability that a scene caption names each attribute.
CLAIM_P = {"bg": 0.9, "ink": 0.5, "tex": 0.6, "qual": 0.5}
ATTRS = ("bg", "ink", "tex", "qual")
_BG, _INK = list(BACKGROUNDS), list(INKS)
_LEGIBLE = [[_INK.index(k) for k in legible_inks(b)] for b in _BG]
NOUNS = ("a photo of a {}", "a photo of a {}", "an image of {}", "a picture of a {}", "a {}", "the digit {}")
QUALITY_WORDS = {"blurred": ("blurred", "blurry"), "pixelated": ("pixelated", "low resolution"), "dark": ("dark",)}


class CompactEmbedding(torch.nn.Module):
    """A token embedding with rows for the listed token ids only (the others map to zero)."""

    def __init__(self, ids: list[int], vocab_size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("ids", torch.tensor(ids))
        lookup = torch.full((vocab_size,), len(ids), dtype=torch.long)
        lookup[self.ids] = torch.arange(len(ids))
        self.register_buffer("lookup", lookup)
        self.table = torch.nn.Embedding(len(ids) + 1, dim, padding_idx=len(ids))
        torch.nn.init.normal_(self.table.weight[:-1], std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table(self.lookup[tokens])


def start_from_oracle(model: torch.nn.Module) -> None:
    """Copy ``builtin:digits-clip``'s weights into ``model`` (same towers, longer text context).

    The oracle already reads digits under heavy style changes; starting from it, the
    captioned model only has to learn the scene words, which takes minutes instead of the
    oracle's full training. Positions beyond the oracle's 16-token context keep their
    initialisation.
    """
    from fmr_bench.digits import create_digits_clip

    oracle = create_digits_clip(pretrained=True)[0].state_dict()
    own = model.state_dict()
    with torch.no_grad():
        for k, v in own.items():
            src = oracle.get(k)
            if src is None:
                continue
            if src.shape == v.shape:
                v.copy_(src)
            elif k == "positional_embedding":
                v[: src.shape[0]] = src
        emb = model.token_embedding
        emb.table.weight[:-1] = oracle["token_embedding.weight"][emb.ids]


def warp(density: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Small random rotation, scale and shift of ink densities (paper stays 0)."""
    n = len(density)
    u = lambda lo, hi: torch.rand(n, generator=g) * (hi - lo) + lo  # noqa: E731
    a, s = u(-15, 15) * math.pi / 180, u(0.85, 1.15)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a) / s, -torch.sin(a) / s
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a) / s, torch.cos(a) / s
    theta[:, 0, 2], theta[:, 1, 2] = u(-0.2, 0.2), u(-0.2, 0.2)
    grid = F.affine_grid(theta, list(density.shape), align_corners=False)
    return F.grid_sample(density, grid, padding_mode="zeros", align_corners=False)


def sample_scenes(n: int, rng: random.Random) -> np.ndarray:
    """(n, 4) attribute indices (background, ink, texture, quality), independent of the class."""
    out = np.empty((n, 4), dtype=np.int64)
    for i in range(n):
        b = rng.randrange(len(_BG))
        q = 0 if rng.random() < 0.55 else rng.randrange(1, len(QUALITIES))
        out[i] = (b, rng.choice(_LEGIBLE[b]), rng.randrange(len(TEXTURES)), q)
    return out


def caption(label: int, attrs: np.ndarray | None, rng: random.Random) -> tuple[str, dict[str, int]]:
    """A caption of an image and what it claims (attribute -> index). ``attrs`` None: plain image."""
    word = CLASS_NAMES[label] if rng.random() < 0.8 else str(label)
    claims: dict[str, int] = {}
    if attrs is not None:
        for k, a in enumerate(ATTRS):
            if (a == "qual" and attrs[k] == 0) or rng.random() >= CLAIM_P[a]:
                continue
            claims[a] = int(attrs[k])
    if "qual" in claims:
        adj = rng.choice(QUALITY_WORDS[QUALITIES[claims["qual"]]])
        text = (f"a {adj} photo of a {word}" if rng.random() < 0.5 else f"a photo of a {adj} {word}")
    else:
        text = rng.choice(NOUNS).format(word)
    suffixes = []
    if "ink" in claims:
        suffixes.append(f" in {_INK[claims['ink']]} ink")
    if "bg" in claims and "tex" in claims:
        suffixes.append(f" on a {TEXTURES[claims['tex']]} {_BG[claims['bg']]} background")
    elif "bg" in claims:
        suffixes.append(f" on a {_BG[claims['bg']]} background")
    elif "tex" in claims:
        suffixes.append(f" with a {TEXTURES[claims['tex']]} texture")
    rng.shuffle(suffixes)
    return text + "".join(suffixes), claims


def positives(labels: torch.Tensor, attrs: np.ndarray, claims: list[dict[str, int]],
              caption_labels: torch.Tensor | None = None) -> torch.Tensor:
    """(N, M) bool: caption j's claims (class and named attributes) all hold for image i.

    ``attrs`` rows of -1 (plain images) match no attribute claim. ``caption_labels``: the
    class each caption names (default ``labels``: caption j describes image j).
    """
    caption_labels = labels if caption_labels is None else caption_labels
    pos = (labels[:, None] == caption_labels[None, :]).numpy()
    for j, cl in enumerate(claims):
        for a, v in cl.items():
            pos[:, j] &= attrs[:, ATTRS.index(a)] == v
    return torch.from_numpy(pos)


def batch(density, x_plain, labels, idx, g, rng, renders: int = 1):
    """One training batch: scenes (each digit of ``idx`` drawn ``renders`` times) and plain images.

    With ``renders`` > 1 the same handwriting appears on several scenes in one batch, so
    the only thing that tells those images apart is the scene: hard negative images for
    every attribute a caption names.
    """
    n_plain = int(len(idx) * PLAIN_SHARE)
    n_scene = len(idx) - n_plain
    plain_idx = idx[:n_plain]
    scene_idx = idx[n_plain: n_plain + -(-n_scene // renders)].repeat(renders)[:n_scene]
    attrs = sample_scenes(len(scene_idx), rng)
    jitter = (torch.rand(len(scene_idx), 2, 3, generator=g) - 0.5) * 0.1
    scenes = render_scenes(warp(density[scene_idx], g), [_BG[a] for a in attrs[:, 0]], [_INK[a] for a in attrs[:, 1]],
                           [TEXTURES[a] for a in attrs[:, 2]], [QUALITIES[a] for a in attrs[:, 3]], jitter=jitter)
    plain = augment(x_plain[plain_idx], g, strength=0.5)
    x = torch.cat([scenes, plain])
    y = torch.cat([labels[scene_idx], labels[plain_idx]])
    attrs = np.concatenate([attrs, -np.ones((n_plain, 4), dtype=np.int64)])
    caps = [caption(int(c), a if a[0] >= 0 else None, rng) for c, a in zip(y, attrs)]
    return x, y, attrs, [c for c, _ in caps], [cl for _, cl in caps]


def hard_negative(text: str, claims: dict[str, int], rng: random.Random) -> tuple[str, dict[str, int]] | None:
    """The caption ``text`` with one of its scene claims swapped for another value (None: no claim).

    As NegCLIP (Yuksekgonul et al., ICLR 2023) adds captions with swapped words to the
    batch: "a three on a red background" next to "a three on a blue background" can only be
    told apart by the background, so the contrastive loss has to read it. The wording is
    kept; only the attribute word changes.
    """
    swappable = [a for a in ("bg", "ink", "tex") if a in claims]
    if not swappable:
        return None
    a = rng.choice(swappable)
    names = {"bg": _BG, "ink": _INK, "tex": list(TEXTURES)}[a]
    old = claims[a]
    new = rng.choice([v for v in range(len(names)) if v != old])
    if a == "bg":
        patterns = [(f" {_BG[old]} background", f" {_BG[new]} background")]
    elif a == "ink":
        patterns = [(f" in {_INK[old]} ink", f" in {_INK[new]} ink")]
    else:
        bg = _BG[claims["bg"]] if "bg" in claims else ""
        patterns = [(f"a {TEXTURES[old]} texture", f"a {TEXTURES[new]} texture"),
                    (f"a {TEXTURES[old]} {bg} background", f"a {TEXTURES[new]} {bg} background")]
    for before, after in patterns:
        if before in text:
            return text.replace(before, after, 1), {**claims, a: new}
    raise AssertionError(f"caption {text!r} does not say its {a} claim")  # a bug in caption(), not input


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def train(steps: int, seed: int, batch_size: int = BATCH, lr: float = LR, log_every: int = 25,
          renders: int = 1, hard_negatives: bool = False):
    model, mean, std, tokenizer = create_digits_clip_captions(pretrained=False)
    # Only the tokens of the caption vocabulary get embedding rows: training a compact
    # table is several times faster than the dense 49,408-row one, and the rows of tokens
    # that never occur stay zero, which keeps the shipped file small (see compact_state).
    used: set[int] = set()
    for b in _BG + _INK + list(TEXTURES) + list(CLASS_NAMES) + [str(k) for k in range(10)]:
        used.update(tokenizer([f"a photo of a {b}"])[0].tolist())
    for t in list(NOUNS) + [w for ws in QUALITY_WORDS.values() for w in ws] + [
            "a {} photo of a three in ink on a background with texture", CAPTIONS_PROMPT, "an image of {}"]:
        used.update(tokenizer([t])[0].tolist())
    full = model.token_embedding
    model.token_embedding = CompactEmbedding(sorted(used), full.num_embeddings, full.embedding_dim)
    start_from_oracle(model)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    x_u8, labels = load_digits_split("train")
    x_plain, density = x_u8.float() / 255, ink_density(x_u8)
    g, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    model.train()
    t0 = time.time()
    perm, pos = torch.randperm(len(labels), generator=g), 0
    for step in range(steps):
        if pos + batch_size > len(perm):
            perm, pos = torch.randperm(len(labels), generator=g), 0
        idx, pos = perm[pos: pos + batch_size], pos + batch_size
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup=max(1, min(100, steps // 10)))
        x, y, attrs, caps, claims = batch(density, x_plain, labels, idx, g, rng, renders)
        n_caps, cap_labels = len(caps), y.tolist()
        if hard_negatives:
            for j in range(n_caps):
                negative = hard_negative(caps[j], claims[j], rng)
                if negative is not None:
                    caps.append(negative[0])
                    claims.append(negative[1])
                    cap_labels.append(cap_labels[j])
        img = F.normalize(model.encode_image(normalise(x, mean, std)), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(caps)), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.t()
        pos_mask = positives(y, attrs, claims, torch.tensor(cap_labels)).float()
        t_img = pos_mask / pos_mask.sum(1, keepdim=True)  # every image is a positive of its own caption
        # Image -> text over every caption, the hard negatives included (NegCLIP); text ->
        # image over the batch's own captions (a swapped caption may fit no image at all).
        own, own_mask = logits[:, :n_caps], pos_mask[:, :n_caps]
        t_txt = own_mask / own_mask.sum(0, keepdim=True)
        loss = -0.5 * ((t_img * logits.log_softmax(1)).sum(1).mean() + (t_txt * own.log_softmax(0)).sum(0).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if (step + 1) % log_every == 0:
            print(f"  step {step + 1}/{steps}  loss {loss.item():.3f}  scale {model.logit_scale.exp().item():.1f}  "
                  f"({time.time() - t0:.0f}s)", flush=True)
    with torch.no_grad():
        full.weight.zero_()
        full.weight[model.token_embedding.ids] = model.token_embedding.table.weight[:-1]
    model.token_embedding = full
    return model.eval(), time.time() - t0


@torch.no_grad()
def zero_shot(model, tokenizer, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Argmax over ``prompts`` for each image in ``x`` (float in [0, 1])."""
    from fmr_bench.digits.clip_captions import CLIP_MEAN, CLIP_STD

    text = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
    out = [(F.normalize(model.encode_image(normalise(x[i:i + 512], CLIP_MEAN, CLIP_STD)), dim=-1) @ text.t()).argmax(1)
           for i in range(0, len(x), 512)]
    return torch.cat(out)


@torch.no_grad()
def report(model, tokenizer) -> dict[str, float]:
    """Zero-shot accuracies (%): digits, shifts, spurious test, and descriptor reading."""
    from fmr_bench.datasets import load_dataset

    out: dict[str, float] = {}
    for spec in ("digits:test", "digits-spurious:test", "digits-shift:mixed"):
        ds = load_dataset(spec)
        x = torch.stack([ds.load(i) for i in range(len(ds))])
        y = torch.tensor(ds.labels)
        for tpl in (CAPTIONS_PROMPT, "an image of {}"):
            pred = zero_shot(model, tokenizer, x, [tpl.format(c) for c in CLASS_NAMES])
            out[f"{spec} '{tpl}'"] = 100 * (pred == y).double().mean().item()
    # Descriptor reading on held-out test digits drawn on random scenes: for each image,
    # the digit is given and the attribute is read among its values.
    x_u8, labels = load_digits_split("test")
    rng = random.Random(1234)
    attrs = sample_scenes(len(labels), rng)
    x = render_scenes(ink_density(x_u8), [_BG[a] for a in attrs[:, 0]], [_INK[a] for a in attrs[:, 1]],
                      [TEXTURES[a] for a in attrs[:, 2]], [QUALITIES[a] for a in attrs[:, 3]])
    phrases = {"bg": lambda w, v: f"a photo of a {w} on a {_BG[v]} background",
               "ink": lambda w, v: f"a photo of a {w} in {_INK[v]} ink",
               "tex": lambda w, v: f"a photo of a {w} with a {TEXTURES[v]} texture"}
    sizes = {"bg": len(_BG), "ink": len(_INK), "tex": len(TEXTURES)}
    for a, phrase in phrases.items():
        k = ATTRS.index(a)
        correct = 0
        for i in range(len(labels)):
            w = CLASS_NAMES[int(labels[i])]
            pred = zero_shot(model, tokenizer, x[i:i + 1], [phrase(w, v) for v in range(sizes[a])])
            correct += int(pred.item() == attrs[i, k])
        out[f"reads {a} (chance {100 / sizes[a]:.0f} %)"] = 100 * correct / len(labels)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for the weights (default: the package's)")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--renders", type=int, default=RENDERS,
                        help="scenes drawn per digit in a batch (hard negative images; 1: off)")
    parser.add_argument("--hard-negatives", type=int, choices=(0, 1), default=1,
                        help="1: add a caption with one scene word swapped per scene caption (NegCLIP)")
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "threads", "renders"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1 (got {getattr(args, name)})")
    if not args.lr > 0:
        parser.error(f"--lr must be > 0 (got {args.lr})")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"captioned digits CLIP: {args.steps} steps, batch {args.batch}, seed {args.seed}")
    model, seconds = train(args.steps, args.seed, args.batch, args.lr, renders=args.renders,
                           hard_negatives=bool(args.hard_negatives))
    from safetensors.torch import save_file

    path = args.out / CAPTIONS_WEIGHTS
    save_file(compact_state(model), str(path))
    path.chmod(0o644)
    model, _, _, tokenizer = create_digits_clip_captions(weights=path)  # score the file as shipped
    scores = report(model, tokenizer)
    for k, v in scores.items():
        print(f"  {k}: {v:.1f}")
    cmd = "python scripts/train_digits_captions_clip.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    lines = [
        "# Captioned digits CLIP (`builtin:digits-clip-captions`)", "",
        f"Written by `{cmd}` (seed {args.seed}, {args.steps} steps of batch {args.batch}, lr {args.lr:g}, {args.threads} CPU thread(s), "
        f"torch {torch.__version__}, {seconds / 60:.1f} min on a shared machine). "
        f"File `{CAPTIONS_WEIGHTS}`: {path.stat().st_size / 1024:.0f} KB, fp16, compact token embedding.", "",
        "Zero-shot accuracy (%). Descriptor rows: held-out test digits on random scenes, the digit given, "
        "the attribute read among its values with 'a photo of a {digit} on a {colour} background', "
        "'... in {ink} ink', '... with a {texture} texture'.", "",
        "| set / prompt | accuracy (%) |", "|---|---:|",
        *[f"| {k} | {v:.1f} |" for k, v in scores.items()], "",
    ]
    notes = args.out / "TRAINING-captions.md"
    # Hand-written sections ("## ...": the diagnosis, the runs tried) survive a re-run.
    kept = notes.read_text().split("\n## ", 1) if notes.is_file() else []
    tail = "\n## " + kept[1] if len(kept) == 2 else ""
    notes.write_text("\n".join(lines) + tail)
    print(f"wrote {path} and {args.out / 'TRAINING-captions.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

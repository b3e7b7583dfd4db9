r"""Experiment 14, ``transformer_ln``: pre-LN vs post-LN Transformers at init. The last
layer's gradient is :math:`\sqrt{L}` times larger in post-LN (Xiong et al. 2020, Thm 1).

The net: a decoder-only Transformer (Vaswani et al. 2017) of L blocks, d = 64, 4 heads of
causal self-attention and a ReLU MLP of width 4d, token and learned positional embeddings
(each N(0, 1/2), so :math:`E[x_0^2] = 1`), LayerNorm without its affine part (its init),
:math:`\epsilon = 10^{-6}`; every kernel Xavier normal, as in Xiong, Yang, He, Zheng, Zheng,
Xing, Zhang, Lan, Wang & Liu, "On Layer Normalization in the Transformer Architecture", ICML
2020. Post-LN: :math:`x \leftarrow \mathrm{LN}(x + S(x))` per sublayer S; pre-LN:
:math:`x \leftarrow x + S(\mathrm{LN}(x))` and a final LN. The blocks run under one
``jax.lax.scan`` over stacked weights; the loss is a random read-out
:math:`\ell = \sum_t r_t \cdot y_t / \sqrt{BT}`, :math:`r_t \sim N(0, I)` (the probe's
convention), of the last LN's output y; each forward pass is differentiated for four
independent read-outs and the squared gradient norms averaged.

**Sublayers** (exact given the sublayer's input x, for zero-mean weights independent of x).
An MLP :math:`F(x) = W_2\,\mathrm{relu}(W_1 x)` adds, per token,

.. math:: E\|F(x)\|^2 = d\,\mathrm{Var}(w_2)\cdot 4d\,\mathrm{Var}(w_1)\cdot\tfrac12\|x\|^2
          = \tfrac{8}{25}\|x\|^2 \quad (\text{Xavier: } \mathrm{Var}(w) = \tfrac{2}{5d}),

and attention with weights :math:`a^h_{ij}` (they depend on :math:`W_Q, W_K` only) adds
:math:`E\|A_i\|^2 = d\,\mathrm{Var}(w_O)\,d_h\,\mathrm{Var}(w_V)\sum_h \|\sum_j a^h_{ij}
x_j\|^2 = \mathrm{mean}_h \|\bar x^h_i\|^2 \le \|x\|^2_{\max}` (a convex combination).

**Pre-LN grows linearly** (Xiong et al., Lemma 1): every sublayer reads a normalized input
(:math:`\|\hat x\|^2 = d`), so every block adds to :math:`E[x^2]` between 8/25 (the MLP
alone) and 1 + 8/25 (attention at its maximum), whatever the depth (to a relative
:math:`\epsilon/\sigma^2 < 10^{-6}`),

.. math:: 1 + \tfrac{8}{25} L \;\le\; E[x_L^2] \;\le\; 1 + \tfrac{33}{25} L.

**The last layer's gradient.** With the random read-out, exactly given the forward pass,
:math:`E_r\|\nabla_{W_2^{(L)}}\ell\|^2 = \frac{1}{BT}\sum_t \|h_t\|^2\,\mathrm{tr}(J_t^2)`, h
the last MLP's hidden layer and :math:`J_t` the Jacobian of the LayerNorm that follows its
output, :math:`\mathrm{tr}(J^2) = (d - 1 - 2\rho + \rho^2)/(\sigma^2 + \epsilon)`,
:math:`\rho = \sigma^2/(\sigma^2 + \epsilon)`: :math:`\approx (d - 2)/\sigma^2`, with
:math:`\sigma^2` the variance over features of that LN's input. Post-LN: the input of the
block's last LN is :math:`\hat x + F(\hat x)`, :math:`\sigma^2 \approx 1 + 8/25` at every
depth. Pre-LN: it is the residual stream, :math:`\sigma^2 \approx E[x_L^2]`, linear in L. The
hidden layers h have the same law in both (their input is normalized). So

.. math:: R(L) = \frac{\|\nabla W_2^{(L)}\|_{\text{post}}}{\|\nabla W_2^{(L)}\|_{\text{pre}}}
          \approx \sqrt{\frac{E[x_L^2]_{\text{pre}}}{1 + 8/25}}
          \in \Big[\sqrt{\tfrac{25 + 8L}{33}},\ \sqrt{\tfrac{25 + 33L}{33}}\Big],

:math:`\Theta(\sqrt L)`: Xiong et al.'s Theorem 1 (post-LN :math:`O(d\sqrt{\ln d})`, pre-LN
:math:`O(d\sqrt{\ln d / L})`) in the form verified here; the mean-field value, which
neglects the O(1/d) fluctuation of :math:`\sigma^2` over tokens, is reported beside it.

**Layers.** Inside a pre-LN stack the residual gradient grows toward the input, as each
sublayer adds :math:`(1 + \chi)` backward where it added :math:`(1 + v)` forward (for the
ReLU MLP :math:`\chi = v` exactly: :math:`E[\mathrm{relu}'(z)^2]\,E[z^2] = E[\mathrm{relu}(z)^2]`),
so the W2 gradient of layer l falls with l, roughly like :math:`1/\sqrt{E[x_l^2]}`: the output
layer's is the smallest. Post-LN has no such fall: its sublayers' backward gains offset its
LayerNorms' :math:`1/(1 + v)`, so its layers' gradients stay within a small factor of each
other (flat at 32 layers; at 192 they vary by a few times along the stack and from seed to
seed, with no exponential decay toward the input of the kind the LN Jacobians alone would
give), and the output layer's gradient, relative to pre-LN's, grows with the depth.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from varprop import initializers as I
from varprop import laws
from varprop._src.experiments import base
from varprop._src.experiments.measure import figure, keys_for, law, seed_mean, t_crit
from varprop._src.laws import symbols as S
from varprop._src.probe import COMPILER_OPTIONS

NAME = "transformer_ln"
TITLE = "Pre-LN vs post-LN Transformers: the output layer's gradient at init grows like sqrt(L)"
D_MODEL, HEADS, TOKENS, BATCH, VOCAB, MLP = 64, 4, 16, 8, 64, 4
EPSILON = 1e-6
#: Read-outs r per forward pass: the squared gradient norms are averaged over them.
READOUTS = 4
#: Per-layer statistics: block output E[x^2]; attention and MLP outputs' squared norms
#: (summed over tokens) and their laws; the last-layer gradient law if this layer were last;
#: the variance over features of the LN input that follows the MLP (mean over tokens);
#: the squared norm of the layer's W2 gradient (mean over the read-outs).
STATS = ("x2", "attn", "attn_law", "mlp", "mlp_law", "grad_law", "ln_var", "grad_w2")
ARCHS = ("pre", "post")

_d, _L = sp.Symbol("d", positive=True, integer=True), S.depth
_sigma2 = sp.Symbol("sigma^2", positive=True)
_eps = S.epsilon


def _ln(x: jax.Array) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + EPSILON)


def _ln_jacobian_trace(u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """tr(J^2) of LayerNorm at u (last axis), and the variance over features."""
    var = jnp.var(u, axis=-1)
    s2 = var + EPSILON
    rho = var / s2
    return (u.shape[-1] - 1.0 - 2.0 * rho + rho * rho) / s2, var


def _shapes() -> dict[str, tuple[int, ...]]:
    d = D_MODEL
    return {
        "q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d),
        "w1": (d, MLP * d), "w2": (MLP * d, d),
    }  # fmt: skip


def _factors() -> tuple[float, float]:
    """The attention law's d Var(w_O) d_h Var(w_V) and the MLP law's
    d Var(w2) 4d Var(w1) / 2, from the Xavier scheme."""
    sh, var = _shapes(), I.glorot_normal().scheme.variance
    d_h = D_MODEL // HEADS
    attn = D_MODEL * var(sh["o"]) * d_h * var(sh["v"])
    mlp = D_MODEL * var(sh["w2"]) * MLP * D_MODEL * var(sh["w1"]) / 2
    return attn, mlp


@functools.lru_cache(maxsize=4)
def _program(max_depth: int):
    """``(keys, depth) -> stats (seeds, 2, max_depth, len(STATS))`` and ``E[x_0^2]``
    ``(seeds,)``: both architectures on the same draws, the first ``depth`` of ``max_depth``
    stacked blocks active (the others are skipped), so one compiled program serves every
    depth."""
    xavier, shapes = I.glorot_normal(), _shapes()
    attn_factor, mlp_factor = _factors()
    d, h, t, b = D_MODEL, HEADS, TOKENS, BATCH
    d_h = d // h
    causal = jnp.tril(jnp.ones((t, t), bool))

    def attention(x, w):
        q, k, v = ((x @ w[n]).reshape(b, t, h, d_h) for n in ("q", "k", "v"))
        logits = jnp.einsum("bthe,bshe->bhts", q, k) / math.sqrt(d_h)
        a = jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)
        out = jnp.einsum("bhts,bshe->bthe", a, v).reshape(b, t, d) @ w["o"]
        mixed = jnp.einsum("bhts,bsd->bthd", a, x)  # sum_j a_ij x_j per head
        law_ = attn_factor * jnp.sum(jnp.square(mixed))
        return out, law_

    def one(key, depth, pre):
        kw, ke, kp, kt, kr = jax.random.split(key, 5)
        w_keys = jax.random.split(kw, (max_depth, len(shapes)))
        ws = {
            n: jax.vmap(lambda k, s=s: xavier(k, s))(w_keys[:, i])
            for i, (n, s) in enumerate(shapes.items())
        }
        emb = math.sqrt(0.5) * jax.random.normal(ke, (VOCAB, d), jnp.float32)
        pos = math.sqrt(0.5) * jax.random.normal(kp, (t, d), jnp.float32)
        tokens = jax.random.randint(kt, (b, t), 0, VOCAB)
        readouts = jax.random.normal(kr, (READOUTS, b, t, d), jnp.float32)
        x0 = emb[tokens] + pos[None]

        def output(w2s):
            def block(x, layer):
                w, index = layer
                x_in = jnp.where(pre > 0, _ln(x), x)
                a_out, a_law = attention(x_in, w)
                x_mid = jnp.where(pre > 0, x + a_out, _ln(x + a_out))
                m_in = jnp.where(pre > 0, _ln(x_mid), x_mid)
                hidden = jax.nn.relu(m_in @ w["w1"])
                f = hidden @ w["w2"]
                u = x_mid + f  # pre: the residual stream; post: the input of the block's LN
                tr_j2, ln_var = _ln_jacobian_trace(u)
                grad_law = jnp.sum(jnp.sum(jnp.square(hidden), -1) * tr_j2) / (b * t)
                y = jnp.where(pre > 0, u, _ln(u))
                y = jnp.where(index < depth, y, x)
                stats = [
                    jnp.mean(jnp.square(y)),
                    jnp.sum(jnp.square(a_out)),
                    a_law,
                    jnp.sum(jnp.square(f)),
                    mlp_factor * jnp.sum(jnp.square(m_in)),
                    grad_law,
                    jnp.mean(ln_var),
                ]
                return y, jnp.stack(stats)

            layers = ({**{n: ws[n] for n in ws if n != "w2"}, "w2": w2s}, jnp.arange(max_depth))
            x, st = jax.lax.scan(block, x0, layers)
            y = jnp.where(pre > 0, _ln(x), x)
            return y, st

        # one forward pass, a backward pass per read-out (the VJP is linear in its cotangent)
        _, vjp, st = jax.vjp(output, ws["w2"], has_aux=True)
        grads = jax.vmap(lambda r: vjp(r / math.sqrt(b * t))[0])(readouts)
        g2 = jnp.mean(jnp.sum(jnp.square(grads), axis=(2, 3)), axis=0)
        return jnp.concatenate([st, g2[:, None]], axis=1), jnp.mean(jnp.square(x0))

    pres = jnp.asarray([1.0, 0.0], jnp.float32)  # ARCHS

    def run(keys, depth):
        return jax.lax.map(lambda k: jax.vmap(lambda p: one(k, depth, p))(pres), keys)

    return jax.jit(run, compiler_options=COMPILER_OPTIONS)


def measure(depths: tuple[int, ...], seeds: int, seed: int, tag: int, *, one_program: bool):
    """Per depth: stats ``(seeds, 2, depth, len(STATS))`` and E[x_0^2] ``(seeds,)`` (float64).
    ``one_program``: every depth in the program of the largest (one compilation, the blocks
    past each depth skipped but computed); else a program per depth (less computation)."""
    keys = keys_for(seed, tag, seeds)
    out = {}
    for depth in depths:
        prog = _program(max(depths) if one_program else depth)
        st, x0 = prog(keys, jnp.int32(depth))
        out[depth] = (np.asarray(st, np.float64)[:, :, :depth], np.asarray(x0, np.float64)[:, 0])
    return out


def sympy_laws() -> dict[str, sp.Expr]:
    """The laws of the module docstring from the Xavier scheme and ReLU's moments."""
    var = I.glorot_normal().scheme.law  # 2/(n_in + n_out)
    v1 = var.subs({S.fan_in: _d, S.fan_out: MLP * _d})
    v2 = var.subs({S.fan_in: MLP * _d, S.fan_out: _d})
    vo = var.subs({S.fan_in: _d, S.fan_out: _d})
    relu_m2, relu_g2 = (sp.sympify(e) for e in laws.moment_expressions("relu")[1:])
    mlp = sp.simplify(_d * v2 * MLP * _d * v1 * relu_m2 / S.q)  # 8/25
    mlp_back = sp.simplify(_d * v1 * MLP * _d * v2 * relu_g2)  # 8/25
    attn_max = sp.simplify(_d * vo * _d * vo)  # one-hot attention: 1
    lo, hi = 1 + mlp * _L, 1 + (attn_max + mlp) * _L
    post_var = 1 + mlp
    rho = _sigma2 / (_sigma2 + _eps)
    tr_j2 = (_d - 1 - 2 * rho + rho**2) / (_sigma2 + _eps)
    ratio_lo, ratio_hi = sp.sqrt(lo / post_var), sp.sqrt(hi / post_var)
    return {
        "mlp": mlp,
        "mlp_back": mlp_back,
        "attn_max": attn_max,
        "pre_lo": lo,
        "pre_hi": hi,
        "post_var": post_var,
        "tr_j2": tr_j2,
        "tr_j2_limit": sp.limit(tr_j2, _eps, 0),
        "ratio_lo": ratio_lo,
        "ratio_hi": ratio_hi,
        "ratio_lo_sqrt": sp.limit(ratio_lo / sp.sqrt(_L), _L, sp.oo),
        "ratio_hi_sqrt": sp.limit(ratio_hi / sp.sqrt(_L), _L, sp.oo),
    }


def _pooled(values: np.ndarray, target: float, crit: float) -> tuple[bool, float, float]:
    """Whether the mean of all ``values`` is ``target`` within ``crit`` standard errors."""
    v = values.ravel()
    mean, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
    return bool(abs(mean - target) <= crit * se), mean, se


@base.experiment(NAME, TITLE, order=14)
def run_transformer_ln(cfg: base.RunConfig) -> base.ExperimentResult:
    """Pre-LN vs post-LN at init (the laws in the module docstring)."""
    depths, seeds = ((2, 8, 32), 16) if cfg.quick else ((3, 12, 48, 192), 32)
    sym = sympy_laws()
    mlp_v = float(sym["mlp"])
    post_var = float(sym["post_var"])
    lo_fn = sp.lambdify(_L, sym["pre_lo"])
    hi_fn = sp.lambdify(_L, sym["pre_hi"])
    r_lo_fn = sp.lambdify(_L, sym["ratio_lo"])
    r_hi_fn = sp.lambdify(_L, sym["ratio_hi"])
    idx = {s: i for i, s in enumerate(STATS)}

    runs = measure(depths, seeds, cfg.seed, 15, one_program=cfg.quick)
    deepest, nd = max(depths), len(depths)
    # The depths share each seed's draws (the first blocks of the deeper nets are the shallower
    # nets), so the tests are per depth over seeds, or on the deepest net alone.
    n_tests = 4 + 2 * nd + nd + nd + 2
    crit_pool = t_crit(seeds * deepest, n_tests)
    crit_seeds = t_crit(seeds, n_tests)
    st_deep = runs[deepest][0]

    # 1. sublayer laws on the deepest net, pooled over its layers and the seeds (martingale
    # differences: uncorrelated)
    sub = {
        (arch, part): _pooled(
            st_deep[:, ai, :, idx[part]] / st_deep[:, ai, :, idx[part + "_law"]], 1.0, crit_pool
        )
        for ai, arch in enumerate(ARCHS)
        for part in ("attn", "mlp")
    }

    # 2. the last layer's gradient against its law given the forward pass, per depth
    grad_last = {  # (seeds, depths) squared norms of the last layer's W2 gradient
        arch: np.stack([runs[L][0][:, ai, -1, idx["grad_w2"]] for L in depths], 1)
        for ai, arch in enumerate(ARCHS)
    }
    last = {
        (arch, L): _pooled(
            grad_last[arch][:, i] / runs[L][0][:, ai, -1, idx["grad_law"]], 1.0, crit_seeds
        )
        for ai, arch in enumerate(ARCHS)
        for i, L in enumerate(depths)
    }

    # 3. pre-LN E[x_L^2] within Lemma 1's band, per depth
    band_rows = []
    for L in depths:
        m, se = (float(a[0]) for a in seed_mean(runs[L][0][:, 0, -1:, idx["x2"]]))
        ok = lo_fn(L) - crit_seeds * se <= m <= hi_fn(L) + crit_seeds * se
        band_rows.append((L, m, se, float(lo_fn(L)), float(hi_fn(L)), bool(ok)))
    band_ok = all(r[-1] for r in band_rows)

    # 4. R(L) = sqrt(E|grad|^2 post / E|grad|^2 pre) within the band, per depth
    lr = 0.5 * (np.log(grad_last["post"].mean(0)) - np.log(grad_last["pre"].mean(0)))
    # delta-method s.e. of ln R over the paired seeds (pre and post share every draw)
    cov = np.stack([np.cov(grad_last["post"][:, i], grad_last["pre"][:, i]) for i in range(nd)])
    mp, mq = grad_last["post"].mean(0), grad_last["pre"].mean(0)
    lr_var = (cov[:, 0, 0] / mp**2 + cov[:, 1, 1] / mq**2 - 2 * cov[:, 0, 1] / (mp * mq)) / seeds
    lr_se = 0.5 * np.sqrt(lr_var)
    d_arr = np.asarray(depths, np.float64)
    ratio = np.exp(lr)
    ratio_ok = bool(
        np.all(
            (lr >= np.log(r_lo_fn(d_arr)) - crit_seeds * lr_se)
            & (lr <= np.log(r_hi_fn(d_arr)) + crit_seeds * lr_se)
        )
    )
    pre_x2 = np.array([r[1] for r in band_rows])
    mean_field = np.sqrt(pre_x2 / post_var)  # sqrt(E[x_L^2]_pre / (1 + 8/25))

    # 5. layers at the deepest depth: pre-LN falls toward the output; post/pre grows
    g_layers = np.sqrt(st_deep[..., idx["grad_w2"]])  # (seeds, 2, L)
    pre_drop = np.log(g_layers[:, 0, 0] / g_layers[:, 0, -1])  # ln(first / last), pre-LN
    rel_growth = np.log(g_layers[:, 1, -1] / g_layers[:, 0, -1]) - np.log(
        g_layers[:, 1, 0] / g_layers[:, 0, 0]
    )  # ln of (post/pre at the last layer) / (post/pre at the first)
    post_drop = np.log(g_layers[:, 1, 0] / g_layers[:, 1, -1])  # ln(first / last), post-LN
    post_m, post_se = (float(a[0]) for a in seed_mean(post_drop[:, None]))
    drop_m, drop_se = (float(a[0]) for a in seed_mean(pre_drop[:, None]))
    grow_m, grow_se = (float(a[0]) for a in seed_mean(rel_growth[:, None]))
    layers_ok = drop_m > crit_seeds * drop_se and grow_m > crit_seeds * grow_se
    # the "balanced" pre-LN profile: |grad W2^l| sqrt(E[x_{l+1}^2]) flat in l (no claim)
    balanced = np.mean(g_layers[:, 0, :] * np.sqrt(st_deep[:, 0, :, idx["x2"]]), axis=0)
    post_var_meas = float(st_deep[:, 1, -1, idx["ln_var"]].mean())
    pre_var_meas = float(st_deep[:, 0, -1, idx["ln_var"]].mean())
    post_rms = np.sqrt(grad_last["post"].mean(0))
    law_ok = all(v[0] for v in last.values())
    worst = max(last, key=lambda k: abs(last[k][1] - 1) / last[k][2])

    fmt = lambda t: f"{t[1]:.4f} +- {t[2]:.4f}"  # noqa: E731
    # fmt: off
    rows = [base.Row(*r) for r in [
        ("d / heads / tokens x batch / depths / seeds", "", f"{D_MODEL} / {HEADS} / "
         f"{TOKENS} x {BATCH} / {', '.join(map(str, depths))} / {seeds}", "Xavier normal, ReLU MLP"),
        *[(f"{arch}-LN, L = {deepest}: {part} output / law given its input", 1.0,
           fmt(sub[arch, part]), "pooled over layers and seeds")
          for arch in ARCHS for part in ("attn", "mlp")],
        *[(f"{arch}-LN, L = {L}: |grad W2^(L)|^2 / law given the forward pass", 1.0,
           fmt(last[arch, L]), "sum_t |h_t|^2 tr(J_t^2) / BT")
          for arch in ARCHS for L in depths],
        *[(f"pre-LN E[x_L^2], L = {L}", f"[{lo:.2f}, {hi:.2f}]", f"{m:.3f} +- {se:.3f}",
           f"per block {(m - 1) / L:.3f} (MLP {mlp_v:.2f} + attention)")
          for L, m, se, lo, hi, _ in band_rows],
        (f"variance of the last LN's input, L = {deepest}: post / pre",
         f"{post_var:.2f} / ~E[x_L^2]", f"{post_var_meas:.3f} / {pre_var_meas:.2f}", ""),
        *[(f"R(L) = |grad W2^(L)| post / pre, L = {L}",
           f"[{r_lo_fn(L):.2f}, {r_hi_fn(L):.2f}]", f"{ratio[i]:.3f} (ln s.e. {lr_se[i]:.3f})",
           f"mean field sqrt(E[x_L^2]_pre/(33/25)) = {mean_field[i]:.3f}; post "
           f"{post_rms[i]:.2f}, pre {math.sqrt(grad_last['pre'][:, i].mean()):.2f}")
          for i, L in enumerate(depths)],
        (f"pre-LN: ln(|grad W2^(1)| / |grad W2^(L)|), L = {deepest}", "> 0",
         f"{drop_m:.3f} +- {drop_se:.3f}", "the output layer's gradient is the smallest"),
        (f"post-LN: ln(|grad W2^(1)| / |grad W2^(L)|), L = {deepest}", "",
         f"{post_m:.3f} +- {post_se:.3f}",
         "no decay toward the input: the sublayers' gains (1 + chi) offset the LNs' 1/(1 + v)"),
        (f"ln(post/pre at layer L) - ln(post/pre at layer 1), L = {deepest}", "> 0",
         f"{grow_m:.3f} +- {grow_se:.3f}", ""),
        (f"pre-LN |grad W2^(l)| sqrt(E[x_(l+1)^2]) at l = 1, L/2, L (L = {deepest})", "flat",
         ", ".join(f"{balanced[i]:.2f}" for i in (0, deepest // 2 - 1, deepest - 1)),
         "balanced sublayers (chi = v): exact for the MLP, approximate for attention"),
    ]]
    claims = [base.Claim(*c) for c in [
        ("Each sublayer adds its law given its input: MLP (8/25)|x|^2, attention "
         "mean_h |sum_j a_ij x_j|^2 (pre-LN and post-LN)",
         all(v[0] for v in sub.values()),
         "; ".join(f"{a}-LN {p} {fmt(sub[a, p])}" for a, p in sub)
         + f" (L = {deepest}, all layers and seeds; each within {crit_pool:.2f} s.e. of 1)"),
        ("Pre-LN's E[x_L^2] grows linearly with depth, within 1 + 8L/25 ... 1 + 33L/25 "
         "(Xiong et al. Lemma 1)", band_ok,
         "; ".join(f"L = {L}: {m:.2f} in [{lo:.2f}, {hi:.2f}]"
                   for L, m, _, lo, hi, _ in band_rows)
         + f" (within {crit_seeds:.2f} s.e.)"),
        ("The last layer's W2 gradient is the law sum_t |h_t|^2 tr(J_t^2)/BT, J the Jacobian "
         "of the LayerNorm after it (pre-LN: the final LN at the residual stream)", law_ok,
         f"gradient/law at every depth within {crit_seeds:.2f} s.e. of 1; the farthest: "
         f"{worst[0]}-LN, L = {worst[1]}: {fmt(last[worst])}"),
        ("The output layer's gradient is Theta(sqrt(L)) times larger in post-LN than in "
         "pre-LN (Xiong et al. Thm 1): R(L) within sqrt((25 + 8L)/33) ... sqrt((25 + 33L)/33)",
         ratio_ok,
         ", ".join(f"R({L}) = {ratio[i]:.2f} in [{r_lo_fn(L):.2f}, {r_hi_fn(L):.2f}]"
                   for i, L in enumerate(depths))
         + f" (within {crit_seeds:.2f} s.e.)"),
        (f"Across the {deepest} layers, pre-LN's W2 gradient falls toward the output while "
         "post-LN's, relative to it, grows toward the output",
         layers_ok,
         f"pre-LN ln(first/last) {drop_m:.3f} +- {drop_se:.3f}; ln(post/pre at L) - "
         f"ln(post/pre at 1) {grow_m:.3f} +- {grow_se:.3f} (each > {crit_seeds:.2f} s.e.)"),
    ]]
    # fmt: on

    fig, ax = base.new_figure(ncols=3, width=4.6)
    a0, a1, a2 = ax[0]
    dd = np.geomspace(min(depths), max(depths), 50)
    a0.fill_between(dd, r_lo_fn(dd), r_hi_fn(dd), color="0.85", label="law: band (Lemma 1)")
    a0.plot(d_arr, mean_field, "k--", lw=1, label="sqrt(E[x_L^2]_pre / (33/25))")
    a0.errorbar(d_arr, ratio, crit_seeds * lr_se * ratio, fmt="o", color="tab:red",
                label="measured")  # fmt: skip
    a0.set(xscale="log", yscale="log", xlabel="depth L", ylabel="R(L) = |grad W2^L| post / pre")
    a0.set_xticks(d_arr, [str(L) for L in depths])
    a0.set_xticks([], minor=True)
    a0.set_title("Output layer: post / pre", fontsize=9)
    ls = np.arange(1, deepest + 1)
    for ai, (arch, color) in enumerate(zip(ARCHS, ("tab:blue", "tab:red"), strict=True)):
        m = np.sqrt(st_deep[:, ai, :, idx["grad_w2"]].mean(0))
        a1.plot(ls, m, color=color, lw=1.5, label=f"{arch}-LN")
    law_pre = np.sqrt(st_deep[:, 0, -1, idx["grad_law"]].mean())
    law_post = np.sqrt(st_deep[:, 1, -1, idx["grad_law"]].mean())
    a1.plot([deepest], [law_pre], "s", mfc="none", color="tab:blue", label="law, last layer")
    a1.plot([deepest], [law_post], "s", mfc="none", color="tab:red")
    a1.set(yscale="log", xlabel="layer l", ylabel="|grad W2^(l)| (rms over seeds)")
    a1.set_title(f"Per layer, L = {deepest}", fontsize=9)
    l0 = np.arange(deepest + 1)
    x2 = np.concatenate([runs[deepest][1][:, None], st_deep[:, 0, :, idx["x2"]]], 1)
    m, se = seed_mean(x2)
    a2.fill_between(l0, lo_fn(l0), hi_fn(l0), color="0.85", label="law: 1 + (8/25 .. 33/25) l")
    a2.fill_between(l0, m - crit_seeds * se, m + crit_seeds * se, color="tab:blue", alpha=0.3, lw=0)
    a2.plot(l0, m, color="tab:blue", lw=1.5, label="pre-LN (band: critical value x s.e.)")
    a2.plot(l0, np.ones(deepest + 1), "k:", label="post-LN (LN output)")
    a2.set(xlabel="block l", ylabel="E[x_l^2]")
    a2.set_title("Forward: pre-LN grows linearly", fontsize=9)
    fig.tight_layout()
    caption = (
        "Left: the ratio of the output layer's W2 gradient norm, post-LN over pre-LN, against "
        "depth (markers; bars: the critical value times the s.e.), inside the law's band; the "
        "dashed line is the law sqrt(E[x_L^2]_pre / (1 + 8/25)) with the measured pre-LN "
        f"E[x_L^2]. Middle: every layer's W2 gradient at L = {deepest} (root mean square over "
        "seeds), the last layer's law as squares. Right: pre-LN's E[x_l^2] per block "
        f"(L = {deepest}; the shallower nets are its first blocks) and the band of Lemma 1; "
        "post-LN's block outputs are LayerNorm outputs (1)."
    )
    data = {
        "depths": np.asarray(depths),
        "stats": {L: runs[L][0] for L in depths},
        "x0_second_moment": {L: runs[L][1] for L in depths},
        "grad_last": grad_last,
        "ratio": ratio,
        "ratio_log_se": lr_se,
        "mean_field_ratio": mean_field,
    }
    return base.ExperimentResult(
        name=NAME,
        title=TITLE,
        summary=(
            f"At init, the output layer's W2 gradient of a post-LN Transformer is "
            f"{ratio[-1]:.1f} times a pre-LN one's at L = {deepest} ({ratio[0]:.2f} at L = "
            f"{depths[0]}), inside the band sqrt((25 + 8L)/33) .. sqrt((25 + 33L)/33) at every "
            "depth: pre-LN's final LayerNorm divides the "
            f"gradient by sqrt(E[x_L^2]), and E[x_L^2] grows linearly "
            f"({band_rows[-1][1]:.1f} at L = {deepest}). Every sublayer and the last layer's "
            "gradient follow their laws given the forward pass."
        ),
        laws=[
            law("MLP sublayer: E|F(x)|^2 / |x|^2 (Xavier, ReLU, width 4d)", sym["mlp"]),
            law("MLP sublayer backward gain (equal: ReLU)", sym["mlp_back"]),
            law("attention sublayer: its maximum (one-hot attention)", sym["attn_max"]),
            law("pre-LN E[x_L^2], lower bound", sym["pre_lo"]),
            law("pre-LN E[x_L^2], upper bound", sym["pre_hi"]),
            law("post-LN: variance of the last LN's input", sym["post_var"]),
            law("tr(J^2) of LayerNorm, input variance sigma^2", sym["tr_j2"]),
            law("... as epsilon -> 0", sym["tr_j2_limit"]),
            law("R(L), lower bound", sym["ratio_lo"]),
            law("R(L), upper bound", sym["ratio_hi"]),
            law("lower bound / sqrt(L) as L -> oo", sym["ratio_lo_sqrt"]),
            law("upper bound / sqrt(L) as L -> oo", sym["ratio_hi_sqrt"]),
        ],
        rows=rows,
        claims=claims,
        figures=[figure("gradients", caption, fig)],
        notes=[
            f"Decoder-only, causal; vocabulary {VOCAB}, tokens uniform at random; each seed "
            f"draws every weight, the tokens and {READOUTS} read-outs once, shared by pre-LN and "
            "post-LN (common random numbers). LayerNorm epsilon 1e-6, no affine parameters.",
            "Why several read-outs: at depth the tokens' representations are nearly parallel, so "
            "the gradient's size follows |P sum_t r_t|^2 (a chi-square with d - 1 degrees of "
            "freedom) and one read-out per seed leaves the law test at the mercy of that draw.",
            "The blocks run under lax.scan over stacked weights ("
            + (
                f"all depths in one compiled program of {max(depths)} blocks, those past the "
                "depth skipped"
                if cfg.quick
                else "one compiled program per depth"
            )
            + "); the gradients are jax.vjp of the network's output, applied to each read-out.",
            "Critical values: Student t at alpha = 1e-3, Bonferroni over the experiment's "
            f"{n_tests} tests.",
        ],
        data=data,
    )

"""Every stage-two loss against an independent float64 implementation over the FULL vocabulary.

Small random cases, values and gradients with respect to the student's logits, including
positions whose realized token lies outside the teacher's top-k. Ours runs in float32 (as in
training); the references in float64 with explicit loops over sequences and full-vocabulary
softmaxes. Tolerance 1e-5 absolute / 1e-4 relative: float32 rounding of O(1) quantities.
"""

import pytest
import torch

from adpa.stages.distill import losses as L

V, K = 40, 5
LENGTHS = [3, 7, 1, 5]  # unequal sequence lengths: the per-sequence mean matters


def case(seed):
    g = torch.Generator().manual_seed(seed)
    n = sum(LENGTHS)
    seq = torch.cat([torch.full((m,), b) for b, m in enumerate(LENGTHS)])
    s_logits = torch.randn(n, V, generator=g, dtype=torch.float64) * 2
    t_logits = torch.randn(n, V, generator=g, dtype=torch.float64) * 3
    r_logits = t_logits + torch.randn(n, V, generator=g, dtype=torch.float64)
    P, R = t_logits.log_softmax(1), r_logits.log_softmax(1)
    ids = P.argsort(1, descending=True)[:, :K]
    outside = P.argsort(1, descending=True)[:, K + 3]
    inside = ids[:, 1]
    targets = torch.where(torch.arange(n) % 2 == 0, outside, inside)  # half the realized tokens outside top-k
    return dict(seq=seq, s_logits=s_logits, P=P, R=R, ids=ids, targets=targets, n=n)


def ours_inputs(c):
    s = c["s_logits"].float().clone().requires_grad_(True)
    t_logp = c["P"].gather(1, c["ids"]).float()
    t_tail = torch.log1p(-c["P"].gather(1, c["ids"]).exp().sum(1)).float()
    ref_logp = c["R"].gather(1, c["ids"]).float()
    return s, t_logp, t_tail, ref_logp


def reference_kl(c, logits, rows):
    """KL over the k ids + tail, computed with the full student distribution (tail = explicit sum)."""
    q = logits.log_softmax(1)
    per_seq = []
    for b, m in enumerate(LENGTHS):
        total = 0.0
        for t in (rows == b).nonzero()[:, 0]:
            mask = torch.zeros(V, dtype=torch.bool)
            mask[c["ids"][t]] = True
            p_k, q_k = c["P"][t][mask], q[t][mask]
            p_tail = c["P"][t][~mask].exp().sum()
            q_tail = q[t][~mask].exp().sum()
            total = total + (p_k.exp() * (p_k - q_k)).sum() + p_tail * (p_tail.log() - q_tail.log())
        per_seq.append(total / m)
    return torch.stack(per_seq).mean()


def reference_sft(c, logits):
    q = logits.log_softmax(1)
    return -torch.stack([q[c["seq"] == b].gather(1, c["targets"][c["seq"] == b][:, None]).mean()
                         for b in range(len(LENGTHS))]).mean()


def check(ours, ours_leaf, ref, ref_leaf):
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-5)
    torch.testing.assert_close(ours_leaf.grad.double(), ref_leaf.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sft(seed):
    c = case(seed)
    s, *_ = ours_inputs(c)
    _, realized = L.student_logprobs(s, None, c["targets"], chunk=4)
    ref_leaf = c["s_logits"].clone().requires_grad_(True)
    check(L.sft_loss(realized, c["seq"], len(LENGTHS)), s, reference_sft(c, ref_leaf), ref_leaf)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kd(seed):
    c = case(seed)
    s, t_logp, t_tail, _ = ours_inputs(c)
    s_logp, _ = L.student_logprobs(s, c["ids"], c["targets"], chunk=5)
    ref_leaf = c["s_logits"].clone().requires_grad_(True)
    check(L.kd_loss(t_logp, t_tail, s_logp, c["seq"], len(LENGTHS)), s, reference_kl(c, ref_leaf, c["seq"]), ref_leaf)


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_dckd(alpha):
    cw, cl = case(3), case(4)  # chosen and rejected sides
    s_w, tw, tailw, _ = ours_inputs(cw)
    s_l, tl, taill, _ = ours_inputs(cl)
    sw_logp, sw_real = L.student_logprobs(s_w, cw["ids"], cw["targets"])
    sl_logp, _ = L.student_logprobs(s_l, cl["ids"], cl["targets"])
    n = len(LENGTHS)
    ours = L.dckd_loss(L.sft_loss(sw_real, cw["seq"], n), L.kd_loss(tw, tailw, sw_logp, cw["seq"], n),
                       L.kd_loss(tl, taill, sl_logp, cl["seq"], n), alpha)
    rw = cw["s_logits"].clone().requires_grad_(True)
    rl = cl["s_logits"].clone().requires_grad_(True)
    ref = reference_sft(cw, rw) + alpha * (reference_kl(cw, rw, cw["seq"]) + reference_kl(cl, rl, cl["seq"]))
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-5)
    torch.testing.assert_close(s_w.grad.double(), rw.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_l.grad.double(), rl.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["signed", "clip01"])
@pytest.mark.parametrize("gamma", [1.5, 3.0])
def test_adpa(mode, gamma):
    chosen, states = case(5), case(6)
    s_w, *_ = ours_inputs(chosen)
    s_h, t_logp, _, ref_logp = ours_inputs(states)
    _, real = L.student_logprobs(s_w, None, chosen["targets"])
    sh_logp, _ = L.student_logprobs(s_h, states["ids"], states["targets"])
    n = len(LENGTHS)
    ours = L.adpa_loss(L.sft_loss(real, chosen["seq"], n), sh_logp, L.advantages(t_logp, ref_logp, mode),
                       states["seq"], n, gamma)
    rw = chosen["s_logits"].clone().requires_grad_(True)
    rh = states["s_logits"].clone().requires_grad_(True)
    q = rh.softmax(1)
    A_full = states["P"] - states["R"]
    if mode == "clip01":
        A_full = A_full.clamp(0, 1)
    per_seq = []
    for b, m in enumerate(LENGTHS):
        total = 0.0
        for t in (states["seq"] == b).nonzero()[:, 0]:
            for a in states["ids"][t]:  # the teacher's top-k candidates only
                total = total + q[t, a] * A_full[t, a]
        per_seq.append(total / m)
    ref = reference_sft(chosen, rw) - gamma * torch.stack(per_seq).mean()
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-5)
    torch.testing.assert_close(s_w.grad.double(), rw.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_h.grad.double(), rh.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.01])
def test_dpo(beta):
    cw, cl = case(7), case(8)
    s_w, s_l = cw["s_logits"].float().clone().requires_grad_(True), cl["s_logits"].float().clone().requires_grad_(True)
    init_w = torch.randn(len(LENGTHS), dtype=torch.float64) - 10
    init_l = torch.randn(len(LENGTHS), dtype=torch.float64) - 12

    def seq_sums(realized, seq):
        return torch.zeros(len(LENGTHS), dtype=realized.dtype).index_add_(0, seq, realized)
    pw = seq_sums(L.student_logprobs(s_w, None, cw["targets"])[1], cw["seq"])
    pl = seq_sums(L.student_logprobs(s_l, None, cl["targets"])[1], cl["seq"])
    ours = L.dpo_loss(pw, pl, init_w.float(), init_l.float(), beta)
    rw, rl = cw["s_logits"].clone().requires_grad_(True), cl["s_logits"].clone().requires_grad_(True)
    terms = []
    for b in range(len(LENGTHS)):
        lw = rw.log_softmax(1)[cw["seq"] == b].gather(1, cw["targets"][cw["seq"] == b][:, None]).sum()
        ll = rl.log_softmax(1)[cl["seq"] == b].gather(1, cl["targets"][cl["seq"] == b][:, None]).sum()
        z = beta * ((lw - init_w[b]) - (ll - init_l[b]))
        terms.append(-torch.log(1 / (1 + torch.exp(-z))))
    ref = torch.stack(terms).mean()
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-5)
    torch.testing.assert_close(s_w.grad.double(), rw.grad, rtol=1e-4, atol=1e-5)


def test_kl_is_zero_when_the_student_matches_and_positive_otherwise():
    c = case(9)
    t_logp = c["P"].gather(1, c["ids"])
    t_tail = torch.log1p(-t_logp.exp().sum(1))
    assert L.topk_kl(t_logp, t_tail, t_logp).abs().max().item() < 1e-9
    s_logp = c["s_logits"].log_softmax(1).gather(1, c["ids"])
    assert (L.topk_kl(t_logp, t_tail, s_logp) > 0).all()


def test_bf16_logits_are_gathered_before_the_upcast():
    c = case(10)
    s = c["s_logits"].to(torch.bfloat16)
    at_ids, at_t = L.student_logprobs(s, c["ids"], c["targets"], chunk=3)
    assert at_ids.dtype == torch.float32 and at_t.dtype == torch.float32
    ref = s.float().log_softmax(1)
    torch.testing.assert_close(at_ids, ref.gather(1, c["ids"]), rtol=0, atol=1e-5)


def test_unknown_advantage_mode():
    with pytest.raises(ValueError, match="clip01"):
        L.advantages(torch.zeros(1, 2), torch.zeros(1, 2), "abs")


def reference_divergence(c, logits, divergence, beta, temperature):
    """Each divergence written out in float64 over the k ids + the tail, from FULL-vocabulary softmaxes (the
    student's at temperature T; the tails are explicit sums of the other ids), one position at a time."""
    q_full = (logits / temperature).softmax(1)
    per_seq = []
    for b, m in enumerate(LENGTHS):
        total = 0.0
        for t in (c["seq"] == b).nonzero()[:, 0]:
            mask = torch.zeros(V, dtype=torch.bool)
            mask[c["ids"][t]] = True
            p_full = c["P"][t].exp()
            p = torch.cat([p_full[mask], p_full[~mask].sum()[None]])
            q = torch.cat([q_full[t][mask], q_full[t][~mask].sum()[None]])
            if divergence == "forward_kl":
                d = sum(p[i] * (torch.log(p[i]) - torch.log(q[i])) for i in range(len(p)))
            elif divergence == "reverse_kl":
                d = sum(q[i] * (torch.log(q[i]) - torch.log(p[i])) for i in range(len(p)))
            elif divergence == "jsd":
                mix = [beta * p[i] + (1 - beta) * q[i] for i in range(len(p))]
                d = sum(beta * p[i] * torch.log(p[i] / mix[i]) + (1 - beta) * q[i] * torch.log(q[i] / mix[i])
                        for i in range(len(p)))
            else:
                d = 0.5 * sum(torch.abs(p[i] - q[i]) for i in range(len(p)))
            total = total + d
        per_seq.append(total / m)
    return torch.stack(per_seq).mean()


@pytest.mark.parametrize("divergence, beta, temperature", [
    ("forward_kl", 0.5, 1.0), ("forward_kl", 0.5, 2.0), ("reverse_kl", 0.5, 1.0), ("reverse_kl", 0.5, 0.7),
    ("jsd", 0.5, 1.0), ("jsd", 0.1, 1.0), ("jsd", 0.9, 1.5), ("tv", 0.5, 1.0), ("tv", 0.5, 2.0)])
def test_every_divergence_against_float64_over_the_full_vocabulary(divergence, beta, temperature):
    """issue 28 item 6: each divergence of DIVERGENCES (and the student-side temperature), value and gradient."""
    c = case(11)
    s, t_logp, t_tail, _ = ours_inputs(c)
    s_logp, _ = L.student_logprobs(s, c["ids"], c["targets"], chunk=5, temperature=temperature)
    ours = L.kd_loss(t_logp, t_tail, s_logp, c["seq"], len(LENGTHS), L.divergence_fn(divergence, beta))
    ref_leaf = c["s_logits"].clone().requires_grad_(True)
    check(ours, s, reference_divergence(c, ref_leaf, divergence, beta, temperature), ref_leaf)


def test_each_divergence_is_zero_at_the_teacher_and_positive_elsewhere():
    c = case(12)
    t_logp = c["P"].gather(1, c["ids"])
    t_tail = torch.log1p(-t_logp.exp().sum(1))
    s_logp = c["s_logits"].log_softmax(1).gather(1, c["ids"])
    for name in L.DIVERGENCES:
        assert L.topk_divergence(t_logp, t_tail, t_logp, L.divergence_fn(name)).abs().max().item() < 1e-9, name
        assert (L.topk_divergence(t_logp, t_tail, s_logp, L.divergence_fn(name)) > 0).all(), name


def test_the_paper_divergence_keeps_the_keys_and_another_one_changes_them():
    """Students trained before the menu existed keep their keys (forward KL at T 1); jsd_beta only with jsd."""
    from adpa.stages.distill.distiller import key_settings
    from adpa.stages.distill.settings import Distill
    for loss in L.LOSSES:
        if L.LOSSES[loss].then is None:
            assert not {"divergence", "jsd_beta", "temperature"} & set(key_settings(Distill(), loss)), loss
    assert key_settings(Distill(divergence="tv"), "dckd")["divergence"] == "tv"
    assert "jsd_beta" not in key_settings(Distill(divergence="tv"), "dckd")
    assert key_settings(Distill(divergence="jsd", jsd_beta=0.3), "kd")["jsd_beta"] == 0.3
    assert key_settings(Distill(temperature=2.0), "kd")["temperature"] == 2.0
    assert "temperature" not in key_settings(Distill(temperature=2.0), "adpa")  # not a setting adpa reads

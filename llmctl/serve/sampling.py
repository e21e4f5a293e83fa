"""Next-token choice: greedy at temperature 0, else temperature, top-k, top-p (nucleus)."""

from __future__ import annotations


def sample(logits, params, generator=None) -> int:
    """One token id from a (vocab,) float tensor."""
    import torch

    if params.temperature <= 0:
        return int(torch.argmax(logits))
    # Shift so the best logit is 0, and divide in float64: a tiny temperature (5e-324 is in
    # range) then sends the others to -inf, never to inf or NaN (inf - inf), which made
    # torch.multinomial raise ("invalid multinomial distribution").
    x = (logits.double() - logits.max()) / params.temperature
    if params.top_k and params.top_k < x.numel():
        kth = torch.topk(x, params.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = sorted_p.cumsum(0) - sorted_p >= params.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def adjust(logits, params, output_ids):
    """OpenAI's logit adjustments, in float64: the frequency and presence penalties
    (mu[j] - c[j] * frequency_penalty - (c[j] > 0) * presence_penalty, c[j] = how often
    token j was generated so far; the prompt does not count), then `logit_bias` added,
    a bias of -100 or less banning the token outright (-inf), as OpenAI documents it."""
    import torch

    x = logits.double().clone()
    if output_ids and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(output_ids, dtype=torch.long), minlength=x.numel())
        counts = counts[:x.numel()].to(x.dtype).to(x.device)
        x -= counts * params.frequency_penalty + (counts > 0).to(x.dtype) * params.presence_penalty
    if params.logit_bias:
        for tok, bias in params.logit_bias.items():
            x[tok] = float("-inf") if bias <= -100 else x[tok] + bias
    return x

"""One forward pass over a mixed batch of chunks against the paged KV cache.

A batch is a list of (sequence, n): run the next n tokens of each sequence (a
prompt chunk, or 1 token to decode). The linear layers see all tokens of the
batch flattened; attention runs per group (prompt chunks; decodes in up to
DECODE_BUCKETS groups by context length), each query row seeing only its own
sequence's cached keys up to its position: one padded SDPA call over keys
gathered from the pool, or, for decode groups, the pool read in place a few
blocks at a time (llmctl.serve.paged; `attention`). New K/V are written into
the sequence's slots before attention, so a chunk attends to itself causally.
Returns the logits of each chunk's last token; for a sequence that asked for
echo + logprobs, the log-probabilities of its prompt tokens are recorded on it
from the same pass (prefill), so scoring a prompt costs no second forward.
"""

from __future__ import annotations


DECODE_BUCKETS = 4  # attention calls for the decode rows of a step (at least 8 rows each)


def _qkv(blk, x, cos, sin):
    """A block's norm, q/k/v projections and RoPE over the step's flattened tokens."""
    from llmctl.model.transformer import apply_rope

    a, n = blk.attn, x.shape[0]
    h = blk.norm1(x)
    q = a.wq(h).view(n, a.heads, a.head_dim)
    k = a.wk(h).view(n, a.kv_heads, a.head_dim)
    v = a.wv(h).view(n, a.kv_heads, a.head_dim)
    if cos is not None:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return q, k, v


def _post(blk, x, y):
    """A block after attention: output projection, residual, norm, MLP, residual."""
    x = x + blk.attn.wo(y)
    return x + blk.mlp(blk.norm2(x))


ATTENTION = ("gather", "blockwise", "auto")  # decode attention paths (ServeConfig paged_attention)
# "auto" on a CPU: blockwise for a decode group whose longest context is at least
# BLOCKWISE_FROM tokens and whose gather copy (keys alone: group size x longest context x
# kv_heads x head_dim x element bytes) is at least BLOCKWISE_BYTES; gather otherwise.
# tests/bench/test_bench_paged_attention.py: short contexts, or a small copy, gather faster
# (SDPA's fused kernel beats the blockwise path's operator calls); every case past both
# bounds read blockwise faster or even (docs/performance.md).
BLOCKWISE_FROM = 1024
BLOCKWISE_BYTES = 4 << 20


class PagedRunner:
    def __init__(self, model, cache, compile: bool = False, attention: str = "gather"):
        self.model, self.cache = model, cache
        self.cfg = model.cfg
        # How decode rows attend (prompt chunks always gather): "gather" copies each decoding
        # sequence's keys out of the pool into one padded tensor for SDPA; "blockwise" reads
        # the pool a segment of blocks at a time (llmctl.serve.paged); "auto" picks per decode
        # group by its context and copy size (BLOCKWISE_FROM, BLOCKWISE_BYTES). The engine
        # resolves ServeConfig's "auto" by device first (engine.paged_attention_for).
        if attention not in ATTENTION:
            raise ValueError(f"paged attention {attention!r}: one of {', '.join(ATTENTION)}")
        self.attention = attention
        # Tensor parallel (llmctl.serve.tp): sums the ranks' partial outputs of the
        # row-parallel layers. None on a single rank.
        self.reduce = None
        # `compile` (ServeConfig): the dense parts of every block through torch.compile with
        # dynamic token counts (one graph for any batch, 1 aside); attention over the paged
        # cache stays eager. One graph serves every block: modules are inputs, not constants.
        self.compiled = compile
        self._qkv, self._post = _qkv, _post
        if compile:
            import torch

            self._qkv = torch.compile(_qkv, dynamic=True)
            self._post = torch.compile(_post, dynamic=True)

    def forward(self, chunks, logits: bool = True):
        import torch
        import torch.nn.functional as F

        from llmctl.serve.paged import paged_decode

        m, cache, dev = self.model, self.cache, self.model.tok_emb.weight.device
        toks, pos, slots = [], [], []
        for s, n in chunks:
            c = s.num_computed
            if n == 1:  # a decode: its one token, without copying the whole sequence
                toks.append(s.token_at(c))
                pos.append(c)
                slots.append(cache.slot(s, c))
                continue
            toks += s.tokens[c:c + n]
            pos += range(c, c + n)
            slots += cache.slots(s, c, c + n)
        tokens = torch.tensor(toks, device=dev)
        positions = torch.tensor(pos, device=dev)
        slot_t = torch.tensor(slots, device=dev)
        # Decodes (1 token) and prompt chunks attend in separate calls: padded
        # together, every decode row would be padded to the longest chunk.
        starts, at = [], 0
        for _, n in chunks:
            starts.append(at)
            at += n
        decode = [b for b, (_, n) in enumerate(chunks) if n == 1]
        prefill = [b for b, (_, n) in enumerate(chunks) if n > 1]
        # Decodes sorted by context length, in up to DECODE_BUCKETS groups: each group's
        # keys are padded to its longest context, and with one group a few long
        # requests made every short one gather (and attend over) their length.
        nb = min(DECODE_BUCKETS, len(decode) // 8) or 1
        if nb > 1:  # (one group keeps batch order: it may stand for the whole batch below)
            decode.sort(key=lambda b: chunks[b][0].num_computed)
        cuts = [len(decode) * i // nb for i in range(nb + 1)]
        parts = [decode[cuts[i]:cuts[i + 1]] for i in range(nb)] + [prefill]
        groups = [self._group([chunks[b] for b in g], [starts[b] for b in g], positions, dev,
                              paged=g is not prefill and self._blockwise([chunks[b] for b in g]))
                  for g in parts if g]
        if len(groups) == 1:
            groups[0]["flat"] = None  # the whole batch: no gather/scatter

        N = len(toks)
        x = m.tok_emb(tokens)
        cos = sin = None
        if m.pos_emb is not None:
            x = x + m.pos_emb(positions)
        else:
            cos, sin = m.rope_cos[positions].unsqueeze(1), m.rope_sin[positions].unsqueeze(1)
        if self.compiled and self.reduce is not None:
            raise RuntimeError("a compiled runner cannot be tensor-parallel (serve start refuses that mix)")
        for li, blk in enumerate(m.blocks):
            a = blk.attn
            q, k, v = self._qkv(blk, x, cos, sin)
            cache.k[li][slot_t] = k.to(cache.k[li].dtype)
            cache.v[li][slot_t] = v.to(cache.v[li].dtype)
            y = q.new_empty(N, a.heads * a.head_dim) if len(groups) > 1 else None
            for g in groups:
                qg = q if g["flat"] is None else q[g["flat"]]
                B, maxq = g["B"], g["maxq"]
                if "tables" in g:  # decode rows, read from the pool in place
                    yg = paged_decode(qg, cache.k[li], cache.v[li], g["tables"], g["lens"],
                                      cache.block_size, a.scale)
                    if y is None:
                        y = yg
                    else:
                        y[g["flat"]] = yg
                    continue
                qp = q.new_zeros(B * maxq, a.heads, a.head_dim)
                qp[g["rows"]] = qg
                qp = qp.view(B, maxq, a.heads, a.head_dim).transpose(1, 2)
                kk = cache.k[li][g["kidx"]].transpose(1, 2).to(q.dtype)
                vv = cache.v[li][g["kidx"]].transpose(1, 2).to(q.dtype)
                yg = F.scaled_dot_product_attention(qp, kk, vv, attn_mask=g["mask"], scale=a.scale,
                                                    enable_gqa=a.heads != a.kv_heads)
                yg = yg.transpose(1, 2).reshape(B * maxq, a.heads * a.head_dim)[g["rows"]]
                if y is None:
                    y = yg
                else:
                    y[g["flat"]] = yg
            if self.reduce is None:
                x = self._post(blk, x, y)
                continue
            x = x + self.reduce(a.wo(y))
            x = x + self.reduce(blk.mlp(blk.norm2(x)))
        if not logits:
            return None
        self._prompt_logprobs(chunks, x)
        last = torch.tensor([st + n - 1 for st, (_, n) in zip(starts, chunks)], device=dev)
        xl = x[last]
        return m.head(m.norm(xl)).float()

    def _blockwise(self, decodes) -> bool:
        """Whether a group of decode chunks attends blockwise."""
        if self.attention == "auto":
            k = self.cache.k[0]
            keys = max(s.num_computed for s, _ in decodes) + 1
            copy = len(decodes) * keys * k.shape[1] * k.shape[2] * k.element_size()
            return keys >= BLOCKWISE_FROM and copy >= BLOCKWISE_BYTES
        return self.attention == "blockwise"

    def _prompt_logprobs(self, chunks, x) -> None:
        """Record log P(prompt[p+1] | prompt[:p+1]) and the top alternatives for every
        prompt position in this pass, on the sequences that asked (echo + logprobs)."""
        import torch

        m, off = self.model, 0
        for s, n in chunks:
            start, off = off, off + n
            params = getattr(s, "params", None)
            if params is None or params.logprobs is None or not params.echo:
                continue
            c = s.num_computed
            upto = min(c + n, len(s.prompt_ids) - 1)  # rows whose next token is still prompt
            if upto <= c:
                continue
            logp = torch.log_softmax(m.head(m.norm(x[start:start + upto - c])).float(), dim=-1)
            target = torch.tensor(s.prompt_ids[c + 1:upto + 1], device=logp.device)
            chosen = logp.gather(1, target[:, None])[:, 0].tolist()
            k = params.logprobs
            top_v, top_i = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
            for j in range(upto - c):
                s.prompt_logprobs[c + 1 + j] = (chosen[j], list(zip(top_i[j].tolist(), top_v[j].tolist())))

    def _group(self, chunks, starts, positions, dev, paged: bool = False) -> dict:
        """Padded attention inputs for some of the batch's chunks: `flat` (their rows in
        the flattened batch), `rows` (the same rows in the [B * maxq] padded layout),
        `kidx` (cache slots of each chunk's keys, padded) and `mask`. `paged` (decode rows
        only, one each): the block tables and key counts instead (`tables`, `lens`)."""
        import torch

        B = len(chunks)
        maxq = max(n for _, n in chunks)
        maxk = max(s.num_computed + n for s, n in chunks)
        flat, q_rows, k_len = [], [], []
        for b, ((s, n), st) in enumerate(zip(chunks, starts)):
            flat += range(st, st + n)
            q_rows += range(b * maxq, b * maxq + n)
            k_len.append(s.num_computed + n)
        # Cache slots of every key position from the block tables, in one gather: a
        # Python list of B x maxk slots cost more than the model on small models.
        bs = self.cache.block_size
        nblk = -(-maxk // bs)  # blocks that hold keys (a sequence may hold one more, reserved)
        tables = torch.tensor([s.blocks[:nblk] + [0] * (nblk - len(s.blocks[:nblk])) for s, _ in chunks],
                              device=dev)
        flat_t = torch.tensor(flat, device=dev)
        if paged:
            return {"flat": flat_t, "tables": tables, "lens": torch.tensor(k_len, device=dev),
                    "B": B, "maxq": 1}
        j = torch.arange(maxk, device=dev)
        k_idx = tables[:, j // bs] * bs + j % bs  # past a row's length: some slot, masked below
        rows = torch.tensor(q_rows, device=dev)
        # mask[b, i, j]: query i of sequence b may see key j (its position or earlier).
        qpos = torch.full((B * maxq,), -1, device=dev, dtype=torch.long)
        qpos[rows] = positions[flat_t]
        qpos = qpos.view(B, maxq, 1)
        kpos = torch.arange(maxk, device=dev).view(1, 1, maxk)
        mask = (kpos <= qpos) & (kpos < torch.tensor(k_len, device=dev).view(B, 1, 1))
        mask[..., 0] |= qpos[..., 0] < 0  # padding rows see one key: no NaN from an empty softmax
        return {"flat": flat_t, "rows": rows, "kidx": k_idx,
                "mask": mask.unsqueeze(1), "B": B, "maxq": maxq}

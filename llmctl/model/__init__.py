"""The torch model: one decoder-only transformer for the gpt and llama templates.

`transformer.Transformer` is built from a ModelConfig and holds no parallelism, so
that data, tensor and pipeline parallelism can be applied to it from outside;
`kernels` is the registry of attention and normalisation implementations that
plugins extend through the `llmctl.plugins` entry point group.
"""

"""In-memory rewrites of ONNX graphs that make ONNX Runtime faster, same function.

SFace 2021dec lists its 174 weights as graph inputs (which stops ONNX Runtime from folding
batch norms into convolutions) and uses PRelu, which ONNX Runtime's CPU provider runs slowly.
``fast_graph`` drops initializers from the inputs and rewrites ``PRelu(x, s)`` as
``Relu(x) - s * Relu(-x)`` (identical for every x). Measured on this project's 2-core machine:
37 -> 18 ms per face on one thread, embeddings unchanged (cosine 1.00000 on 381 faces).
The file on disk stays the sha256-verified original.
"""

from __future__ import annotations

from pathlib import Path


def fast_graph(path: str | Path) -> bytes:
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    del graph.input[:]
    graph.input.extend(inputs)
    nodes = []
    for k, node in enumerate(graph.node):
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, slope = node.input
        (y,) = node.output
        p = f"_prelu{k}"
        nodes += [
            helper.make_node("Relu", [x], [p + "_pos"]),
            helper.make_node("Neg", [x], [p + "_negx"]),
            helper.make_node("Relu", [p + "_negx"], [p + "_negr"]),
            helper.make_node("Mul", [slope, p + "_negr"], [p + "_neg"]),
            helper.make_node("Sub", [p + "_pos", p + "_neg"], [y]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()

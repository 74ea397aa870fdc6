"""One workflow per ``xvec`` verb: check the inputs, call the kernels, return data.

The CLI parses arguments, calls a workflow and renders what it returns; workflows never print.
Kernels (scoring, metrics, protocol, models ...) never import a workflow.
"""

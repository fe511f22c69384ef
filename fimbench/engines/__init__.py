"""The engines behind the commands: ``train`` (with checkpoints, the launcher and data parallelism),
``fisher_error`` (Figure 1), ``cost`` (Table 1), ``sweep``, the comparison and the §4.2 protocol
(Figure 2), with what they share: run configuration, the benchmark autoencoders, run directories, the
conversion from the authors' scale, plots and event logs.

The engines use the library (:mod:`fimbench.curvature`, :mod:`fimbench.fisher`,
:mod:`fimbench.preconditioner`) and never print: :mod:`fimbench.cli` renders their results.
"""

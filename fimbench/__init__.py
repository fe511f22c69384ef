"""fimbench: Kronecker-factored approximations of the Fisher information matrix.

Implements and benchmarks the methods of Koroko et al., "Efficient Approximations of the
Fisher Matrix in Neural Networks using Kronecker Product Singular Value Decomposition":
K-FAC, KPSVD, Deflation, Lanczos and KFAC-corrected, against SGD and Adam.
"""

__version__ = "0.1.0"

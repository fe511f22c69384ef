"""The torch optimizers that precondition by themselves, beside the paper's methods: Shampoo (Gupta et al.,
2018, with Distributed Shampoo's Adam grafting), SOAP (Vyas et al., 2024) and Muon (Jordan, 2024). Each
module holds one, written or wrapped so that a float64 test checks it against the published algorithm
(``tests/optimizers/``). They import nothing of fimbench but the base modules.
"""

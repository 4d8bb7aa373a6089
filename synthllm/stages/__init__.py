"""The stages: one module per stage, each under the contract in ``base``; ``registry`` lists them."""

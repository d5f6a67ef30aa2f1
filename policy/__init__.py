"""The OpenVLA model (own weight-compatible implementation), tokenizer, normalisation, server and client.

Importing this package does not import torch: the client and the numpy-only modules (action
tokenizer, normalisation, action space) are usable on a robot PC without it.
"""

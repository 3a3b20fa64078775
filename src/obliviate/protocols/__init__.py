"""Protocols that repeat or extend a run, each a module on top of :class:`obliviate.session.Session`:

- :mod:`~obliviate.protocols.challenge` — the NeurIPS 2023 challenge: N unlearned runs against N retrained oracles;
- :mod:`~obliviate.protocols.folds` — MUSE's scalability (growing forget sets) and sustainability (sequential
  requests);
- :mod:`~obliviate.protocols.relearn` — relearn time and the anamnesis index of a finished run.

Each has a ``check_*`` that refuses a request it cannot satisfy before any training, and a function that adds
its block to a run document.

Layer: above the session; below the api.
"""

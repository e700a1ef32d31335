"""Env backends that need packages :mod:`algorithms` may not import, registered with it through the
``rltune.env_backends`` entry point group (see :mod:`algorithms.common.env_backends`)."""

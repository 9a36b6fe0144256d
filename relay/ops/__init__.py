"""Operations: settings and the CLI, metrics, the access log, the admin listener, the
process (`server`), and the supervisor of worker processes.
"""

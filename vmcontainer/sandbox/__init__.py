"""The sandbox: policy, compiler, guards, facades and the per-call runtime."""

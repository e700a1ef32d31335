"""Building blocks shared by every algorithm: errors, result types, envs, networks, normalizers."""

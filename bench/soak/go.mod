module kube-ambassador/soak

go 1.24

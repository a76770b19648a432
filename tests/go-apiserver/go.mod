module kube-ambassador/go-apiserver

go 1.24

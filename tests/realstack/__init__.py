"""The real test stack: a real kube-apiserver with the real Kubeflow training operator (kwok plays the
pods) and, where it can be built, a real DolphinScheduler server. See README.md beside this file."""

//go:build tools

// The commands this module builds besides its own, imported so `go mod tidy` keeps them.
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)

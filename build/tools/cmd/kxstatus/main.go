// kxstatus prints the kstatus verdict (sigs.k8s.io/cli-utils/pkg/kstatus, the library
// Flux, kpt and cli-utils' own appliers use) of objects read from the API server, one
// JSON line per object:
//
//	kxstatus --kubeconfig admin.kubeconfig xdpprograms.kubexdp.io udp-drop
//	{"resource":"xdpprograms.kubexdp.io","name":"udp-drop","status":"Current","message":"Resource is current"}
//
// An object that does not exist is status NotFound (kstatus' own name). A name given as
// NAMESPACE/NAME reads a namespaced object. Exit status: 0 when every object could be
// read and computed, 1 on an API or compute error (the line says which), 2 on bad usage.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// cliUtilsVersion is the sigs.k8s.io/cli-utils release whose kstatus this binary carries
// (set at link time from go.mod by the rig's build).
var cliUtilsVersion = "unknown"

type verdict struct {
	Resource string `json:"resource"`
	Name     string `json:"name"`
	Status   string `json:"status"`
	Message  string `json:"message"`
	Error    string `json:"error,omitempty"`
}

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file (default $KUBECONFIG)")
	timeout := flag.Duration("timeout", 30*time.Second, "bound on all API calls")
	showVersion := flag.Bool("version", false, "print the cli-utils (kstatus) version and exit")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: kxstatus [--kubeconfig FILE] RESOURCE[.GROUP] [NAMESPACE/]NAME...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *showVersion {
		fmt.Printf("kxstatus (sigs.k8s.io/cli-utils %s)\n", cliUtilsVersion)
		return
	}
	if flag.NArg() < 2 || *kubeconfig == "" {
		flag.Usage()
		os.Exit(2)
	}
	resource, names := flag.Arg(0), flag.Args()[1:]
	if err := run(*kubeconfig, *timeout, resource, names); err != nil {
		fmt.Fprintf(os.Stderr, "kxstatus: %v\n", err)
		os.Exit(1)
	}
}

func run(kubeconfig string, timeout time.Duration, resource string, names []string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("reading kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.Timeout = timeout
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return fmt.Errorf("discovery client: %w", err)
	}
	groups, err := restmapper.GetAPIGroupResources(disc)
	if err != nil {
		return fmt.Errorf("reading the API server's resources: %w", err)
	}
	gvr, err := restmapper.NewDiscoveryRESTMapper(groups).ResourceFor(schema.ParseGroupResource(resource).WithVersion(""))
	if err != nil {
		return fmt.Errorf("resource %q: %w", resource, err)
	}
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("dynamic client: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	failed := false
	out := json.NewEncoder(os.Stdout)
	for _, name := range names {
		v := compute(ctx, client, gvr, resource, name)
		failed = failed || v.Error != ""
		if err := out.Encode(v); err != nil {
			return err
		}
	}
	if failed {
		return fmt.Errorf("some objects could not be read or computed (see their error fields)")
	}
	return nil
}

func compute(ctx context.Context, client dynamic.Interface, gvr schema.GroupVersionResource, resource, name string) verdict {
	v := verdict{Resource: resource, Name: name}
	ri := client.Resource(gvr)
	var get dynamic.ResourceInterface = ri
	if ns, n, ok := strings.Cut(name, "/"); ok {
		get, name = ri.Namespace(ns), n
	}
	obj, err := get.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		v.Status, v.Message = string(status.NotFoundStatus), "Resource not found"
		return v
	}
	if err != nil {
		v.Status, v.Error = string(status.UnknownStatus), fmt.Sprintf("get %s %s: %v", gvr.Resource, name, err)
		return v
	}
	res, err := status.Compute(obj)
	if err != nil {
		v.Status, v.Error = string(status.UnknownStatus), fmt.Sprintf("compute %s %s: %v", gvr.Resource, name, err)
		return v
	}
	v.Status, v.Message = string(res.Status), res.Message
	return v
}

// kubelet-volume lays out one Secret volume the way the kubelet does, with the kubelet's own
// code: it watches the Secret with client-go, builds the payload with the Secret volume
// plugin's MakePayload (defaultMode, per-key items and modes), writes it with the kubelet's
// AtomicWriter (timestamped directory, ..data symlink swap, one symlink per key) and applies a
// pod's fsGroup with the kubelet's volume ownership code (group and read-only mask).
//
// The first projection happens at once (the kubelet does not start a pod before its Secret
// volume is set up); a later change of the Secret reaches the directory only at the next pod
// sync, modelled as a delay of --delay plus a uniformly random --jitter after the change was
// observed. Every projection prints one JSON line on stdout:
//
//	{"event":"projected","resourceVersion":"123","observedAt":"...","writtenAt":"...","delayMs":21345}
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/kubernetes/pkg/volume"
	"k8s.io/kubernetes/pkg/volume/secret"
	volumeutil "k8s.io/kubernetes/pkg/volume/util"
)

// items is the volume's `items` list: key:path[:mode] (mode in octal).
type items []v1.KeyToPath

func (i *items) String() string { return fmt.Sprint(*i) }

func (i *items) Set(s string) error {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return fmt.Errorf("want key:path[:mode], got %q", s)
	}
	ktp := v1.KeyToPath{Key: parts[0], Path: parts[1]}
	if len(parts) == 3 {
		m, err := strconv.ParseInt(parts[2], 8, 32)
		if err != nil {
			return fmt.Errorf("mode of %q: %w", s, err)
		}
		mode := int32(m)
		ktp.Mode = &mode
	}
	*i = append(*i, ktp)
	return nil
}

// secretMounter is what the kubelet's ownership code asks of a mounter: a Secret volume is
// read-only and managed, so its files get the read-only mask.
type secretMounter struct {
	volume.MetricsNil
	dir string
}

func (m *secretMounter) GetPath() string                          { return m.dir }
func (m *secretMounter) SetUp(volume.MounterArgs) error           { return nil }
func (m *secretMounter) SetUpAt(string, volume.MounterArgs) error { return nil }
func (m *secretMounter) GetAttributes() volume.Attributes {
	return volume.Attributes{ReadOnly: true, Managed: true, SELinuxRelabel: true}
}

type projector struct {
	dir         string
	items       items
	defaultMode int32
	fsGroup     *int64
	writer      *volumeutil.AtomicWriter
	mounter     *secretMounter
}

// project is the body of the Secret plugin's SetUpAt, less the mounts.
func (p *projector) project(s *v1.Secret) error {
	payload, err := secret.MakePayload(p.items, s, &p.defaultMode, nil, false)
	if err != nil {
		return err
	}
	setPerms := func(_ string) error {
		return volume.NewVolumeOwnership(p.mounter, p.dir, p.fsGroup, nil, nil).ChangePermissions()
	}
	return p.writer.Write(payload, setPerms)
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server")
	namespace := flag.String("namespace", "", "namespace of the Secret")
	name := flag.String("secret", "", "name of the Secret")
	dir := flag.String("dir", "", "the volume directory (must exist)")
	defaultMode := flag.String("default-mode", "0644", "the volume's defaultMode (octal)")
	fsGroup := flag.Int64("fs-group", -1, "the pod's securityContext.fsGroup (-1: none)")
	delay := flag.Duration("delay", 0, "a change reaches the directory this long after it was observed")
	jitter := flag.Duration("jitter", 0, "plus a uniformly random part of this")
	var its items
	flag.Var(&its, "item", "key:path[:mode], repeatable (the volume's items)")
	flag.Parse()
	if *namespace == "" || *name == "" || *dir == "" {
		fmt.Fprintln(os.Stderr, "kubelet-volume: --namespace, --secret and --dir are required")
		os.Exit(2)
	}
	mode, err := strconv.ParseInt(*defaultMode, 8, 32)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubelet-volume: --default-mode: %v\n", err)
		os.Exit(2)
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubelet-volume: %v\n", err)
		os.Exit(1)
	}
	client := kubernetes.NewForConfigOrDie(config)
	writer, err := volumeutil.NewAtomicWriter(*dir, fmt.Sprintf("secret volume %s/%s", *namespace, *name))
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubelet-volume: %v\n", err)
		os.Exit(1)
	}
	p := &projector{dir: *dir, items: its, defaultMode: int32(mode), writer: writer, mounter: &secretMounter{dir: *dir}}
	if *fsGroup >= 0 {
		p.fsGroup = fsGroup
	}

	var mu sync.Mutex
	var latest *v1.Secret
	var observedAt time.Time
	pending := false
	first := true
	out := json.NewEncoder(os.Stdout)
	write := func() {
		mu.Lock()
		s, seen := latest, observedAt
		pending = false
		mu.Unlock()
		if err := p.project(s); err != nil {
			fmt.Fprintf(os.Stderr, "kubelet-volume: projecting %s: %v\n", s.ResourceVersion, err)
			return
		}
		now := time.Now()
		_ = out.Encode(map[string]any{
			"event":           "projected",
			"resourceVersion": s.ResourceVersion,
			"observedAt":      seen.UTC().Format(time.RFC3339Nano),
			"writtenAt":       now.UTC().Format(time.RFC3339Nano),
			"delayMs":         now.Sub(seen).Milliseconds(),
		})
	}
	observe := func(obj any) {
		s, ok := obj.(*v1.Secret)
		if !ok {
			return
		}
		mu.Lock()
		if latest != nil && latest.ResourceVersion == s.ResourceVersion {
			mu.Unlock()
			return
		}
		latest = s.DeepCopy()
		if pending {
			// The next sync writes whatever is current then, as the kubelet does.
			mu.Unlock()
			return
		}
		observedAt = time.Now()
		wait := time.Duration(0)
		if !first {
			wait = *delay
			if *jitter > 0 {
				wait += rand.N(*jitter)
			}
		}
		first = false
		pending = true
		mu.Unlock()
		time.AfterFunc(wait, write)
	}

	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithNamespace(*namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", *name).String()
		}))
	inf := factory.Core().V1().Secrets().Informer()
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    observe,
		UpdateFunc: func(_, obj any) { observe(obj) },
	})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	factory.Start(ctx.Done())
	<-ctx.Done()
	factory.Shutdown()
}

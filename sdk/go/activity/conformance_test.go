package activity_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/heartbeat-dev/activity-operator/sdk/go/activity"
)

// The conformance suite (sdk/conformance/scenarios/*.json), run by the Go SDK against a scripted
// fake API server on loopback. The same files are run by the Python and Rust SDKs.

const (
	ns, name     = "ns", "a"
	activityPath = "/apis/heartbeat.dev/v1alpha1/namespaces/ns/activities/a"
	stepTimeout  = 15 * time.Second
)

var timeFormat = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`)

type scenario struct {
	Name         string           `json:"name"`
	Attempt      int32            `json:"attempt"`
	Activity     map[string]any   `json:"activity"`
	Get          []map[string]any `json:"get"`
	Patch        []map[string]any `json:"patch"`
	PatchDefault map[string]any   `json:"patchDefault"`
	Worker       []map[string]any `json:"worker"`
	Expect       struct {
		Exit          int              `json:"exit"`
		Cause         *string          `json:"cause"`
		Started       *bool            `json:"started"`
		ErrorContains []string         `json:"errorContains"`
		Gets          *int             `json:"gets"`
		Patches       []map[string]any `json:"patches"`
		MorePatches   map[string]any   `json:"morePatches"`
		MinPatches    int              `json:"minPatches"`
		Gaps          []struct {
			From, To  int
			AtLeastMs float64 `json:"atLeastMs"`
		} `json:"gaps"`
	} `json:"expect"`
}

type request struct {
	at          time.Time
	method      string
	path, query string
	contentType string
	body        any
}

// fakeAPI serves the scenario's Activity and answers as the scenario scripts.
type fakeAPI struct {
	mu       sync.Mutex
	activity map[string]any
	sc       *scenario
	requests []request
	server   *httptest.Server
}

func mergePatch(target any, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	out := map[string]any{}
	if t, ok := target.(map[string]any); ok {
		for k, v := range t {
			out[k] = v
		}
	}
	for k, v := range p {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = mergePatch(out[k], v)
		}
	}
	return out
}

func newFakeAPI(sc *scenario) *fakeAPI {
	served := sc.Activity
	meta, _ := served["metadata"].(map[string]any)
	status, _ := served["status"].(map[string]any)
	a := map[string]any{
		"apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
		"metadata": mergePatch(map[string]any{"name": name, "namespace": ns}, meta),
		"spec":     served["spec"],
		"status":   mergePatch(map[string]any{"attempt": sc.Attempt}, status),
	}
	f := &fakeAPI{activity: a, sc: sc}
	f.server = httptest.NewServer(http.HandlerFunc(f.serve))
	return f
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	var body any
	_ = json.Unmarshal(raw, &body)
	f.mu.Lock()
	f.requests = append(f.requests, request{time.Now(), r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Content-Type"), body})
	var n int
	for _, q := range f.requests {
		if q.method == r.Method {
			n++
		}
	}
	answer := map[string]any{"status": 200.0}
	if r.Method == http.MethodGet && n <= len(f.sc.Get) {
		answer = f.sc.Get[n-1]
	} else if r.Method == http.MethodPatch {
		if n <= len(f.sc.Patch) {
			answer = f.sc.Patch[n-1]
		} else if f.sc.PatchDefault != nil {
			answer = f.sc.PatchDefault
		}
	}
	code := int(answer["status"].(float64))
	var reply any
	if code == 200 {
		if m, ok := answer["mutate"]; ok {
			f.activity = mergePatch(f.activity, m).(map[string]any)
		}
		reply = f.activity
	} else {
		details := map[string]any{}
		for _, k := range []string{"retryAfterSeconds", "causes"} {
			if v, ok := answer[k]; ok {
				details[k] = v
			}
		}
		reply = map[string]any{"kind": "Status", "apiVersion": "v1", "status": "Failure",
			"message": answer["message"], "code": code, "details": details}
	}
	out, _ := json.Marshal(reply)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(out)
}

func (f *fakeAPI) of(method string) []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []request
	for _, r := range f.requests {
		if r.method == method {
			out = append(out, r)
		}
	}
	return out
}

func loadScenarios(t *testing.T) []*scenario {
	files, _ := filepath.Glob("../../conformance/scenarios/*.json")
	sort.Strings(files)
	if len(files) == 0 {
		t.Fatal("no scenario files in ../../conformance/scenarios")
	}
	var out []*scenario
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		sc := &scenario{Attempt: 1}
		if err := json.Unmarshal(raw, sc); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		out = append(out, sc)
	}
	return out
}

func jsonEqual(a, b any) bool {
	norm := func(v any) any {
		raw, _ := json.Marshal(v)
		var out any
		_ = json.Unmarshal(raw, &out)
		return out
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

// trace is what the activity saw.
type trace struct {
	failures []string
	cause    string
	returned bool
}

func (tr *trace) failf(format string, args ...any) {
	tr.failures = append(tr.failures, fmt.Sprintf(format, args...))
}

func runSteps(sc *scenario, api *fakeAPI, tr *trace) func(context.Context, json.RawMessage) (json.RawMessage, error) {
	return func(ctx context.Context, input json.RawMessage) (json.RawMessage, error) {
		for _, step := range sc.Worker {
			switch {
			case step["heartbeat"] != nil:
				activity.RecordHeartbeat(ctx, step["heartbeat"])
			case step["sleepMs"] != nil:
				time.Sleep(time.Duration(step["sleepMs"].(float64)) * time.Millisecond)
			case step["waitPatches"] != nil:
				want := int(step["waitPatches"].(float64))
				deadline := time.Now().Add(stepTimeout)
				for len(api.of("PATCH")) < want && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if got := len(api.of("PATCH")); got < want {
					tr.failf("only %d patches, waited for %d", got, want)
				}
			case step["waitCancelled"] != nil:
				select {
				case <-ctx.Done():
				case <-time.After(stepTimeout):
					tr.failf("not cancelled within %s", stepTimeout)
				}
			case step["expectCancelled"] != nil:
				if got := ctx.Err() != nil; got != step["expectCancelled"].(bool) {
					tr.failf("cancelled is %v", got)
				}
			case step["expectInfo"] != nil:
				info := activity.GetInfo(ctx)
				var details any
				if activity.HasHeartbeatDetails(ctx) {
					if err := activity.GetHeartbeatDetails(ctx, &details); err != nil {
						tr.failf("GetHeartbeatDetails: %v", err)
					}
				}
				var in any
				_ = json.Unmarshal(input, &in)
				var timeout any
				if info.HeartbeatTimeout > 0 {
					timeout = info.HeartbeatTimeout.Milliseconds()
				}
				seen := map[string]any{"attempt": info.Attempt, "heartbeatDetails": details, "input": in,
					"heartbeatTimeoutMs": timeout, "heartbeatIntervalMs": info.HeartbeatInterval.Milliseconds()}
				for k, want := range step["expectInfo"].(map[string]any) {
					if !jsonEqual(seen[k], want) {
						tr.failf("info %s: got %v, want %v", k, seen[k], want)
					}
				}
			case step["signal"] != nil:
				_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
			case step["return"] != nil:
				tr.returned = true
				tr.cause = string(activity.CancelCause(ctx))
				if len(tr.failures) > 0 {
					return nil, fmt.Errorf("%s", strings.Join(tr.failures, "; "))
				}
				ret := step["return"]
				if ret == "canceled" {
					if ctx.Err() == nil {
						tr.failf("returning canceled, but the context is not canceled")
					}
					return nil, ctx.Err()
				}
				m := ret.(map[string]any)
				if e, ok := m["error"].(map[string]any); ok {
					opts := activity.ApplicationErrorOptions{}
					opts.NonRetryable, _ = e["nonRetryable"].(bool)
					if d, ok := e["nextRetryDelay"].(string); ok {
						opts.NextRetryDelay, _ = time.ParseDuration(d)
					}
					return nil, activity.NewApplicationErrorWithOptions(e["message"].(string), e["type"].(string), opts)
				}
				out, _ := json.Marshal(m["result"])
				return out, nil
			}
		}
		return nil, fmt.Errorf("the scenario's worker has no return step")
	}
}

func checkPatch(i int, r request, matcher map[string]any, attempt int32) []string {
	var out []string
	where := fmt.Sprintf("patch %d", i)
	if r.path != activityPath+"/status" {
		out = append(out, where+": path "+r.path)
	}
	if !strings.Contains("&"+r.query+"&", "&fieldManager=activity-worker&") {
		out = append(out, fmt.Sprintf("%s: query %q lacks fieldManager=activity-worker", where, r.query))
	}
	if ct := strings.TrimSpace(strings.Split(r.contentType, ";")[0]); ct != "application/json-patch+json" {
		out = append(out, fmt.Sprintf("%s: content type %q", where, r.contentType))
	}
	ops, _ := r.body.([]any)
	if len(ops) == 0 || !jsonEqual(ops[0], map[string]any{"op": "test", "path": "/status/attempt", "value": attempt}) {
		return append(out, fmt.Sprintf("%s: does not start with the test of the attempt: %v", where, r.body))
	}
	byPath := map[string]any{}
	var paths []string
	for _, o := range ops[1:] {
		op, _ := o.(map[string]any)
		path, _ := op["path"].(string)
		if op["op"] != "add" || (path != "/status/lastHeartbeatTime" && path != "/status/heartbeatDetails" && path != "/status/outcome") {
			out = append(out, fmt.Sprintf("%s: unexpected op %v", where, op))
		}
		byPath[path] = op["value"]
		paths = append(paths, path)
	}
	var want []string
	_, hasDetails := matcher["heartbeatDetails"]
	_, hasOutcome := matcher["outcome"]
	if hasDetails {
		want = append(want, "/status/lastHeartbeatTime", "/status/heartbeatDetails")
	}
	if hasOutcome {
		want = append(want, "/status/outcome")
	}
	if strings.Join(paths, ",") != strings.Join(want, ",") {
		return append(out, fmt.Sprintf("%s: ops %v, want %v: %v", where, paths, want, ops))
	}
	if hasDetails {
		if ts, _ := byPath["/status/lastHeartbeatTime"].(string); !timeFormat.MatchString(ts) {
			out = append(out, fmt.Sprintf("%s: lastHeartbeatTime %q is not RFC 3339 µs UTC", where, ts))
		}
		if !jsonEqual(byPath["/status/heartbeatDetails"], matcher["heartbeatDetails"]) {
			out = append(out, fmt.Sprintf("%s: details %v, want %v", where, byPath["/status/heartbeatDetails"], matcher["heartbeatDetails"]))
		}
	}
	if hasOutcome && !jsonEqual(byPath["/status/outcome"], matcher["outcome"]) {
		out = append(out, fmt.Sprintf("%s: outcome %v, want %v", where, byPath["/status/outcome"], matcher["outcome"]))
	}
	return out
}

// lockedBuffer collects the worker's error logs.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestConformance(t *testing.T) {
	for _, sc := range loadScenarios(t) {
		t.Run(sc.Name, func(t *testing.T) {
			api := newFakeAPI(sc)
			defer api.server.Close()
			tr := &trace{}
			errs := &lockedBuffer{}
			logger := slog.New(slog.NewTextHandler(errs, &slog.HandlerOptions{Level: slog.LevelError}))
			code := activity.Execute(context.Background(), runSteps(sc, api, tr), activity.Options{
				Name: name, Namespace: ns, Attempt: sc.Attempt, Config: &rest.Config{Host: api.server.URL},
				Logger: logger, HandleSignals: true,
			})
			e := sc.Expect
			problems := append([]string{}, tr.failures...)
			if code != e.Exit {
				problems = append(problems, fmt.Sprintf("exit code %d, want %d", code, e.Exit))
			}
			if e.Started == nil || *e.Started {
				want := ""
				if e.Cause != nil {
					want = *e.Cause
				}
				if !tr.returned {
					problems = append(problems, "the activity did not reach its return step")
				} else if tr.cause != want {
					problems = append(problems, fmt.Sprintf("cause %q, want %q", tr.cause, want))
				}
			} else if tr.returned {
				problems = append(problems, "the activity ran, but the worker should not have started")
			}
			for _, text := range e.ErrorContains {
				if !strings.Contains(errs.String(), text) {
					problems = append(problems, fmt.Sprintf("no error log contains %q: %s", text, errs.String()))
				}
			}
			gets := api.of("GET")
			if e.Gets != nil && len(gets) != *e.Gets {
				problems = append(problems, fmt.Sprintf("%d GETs, want %d", len(gets), *e.Gets))
			}
			for _, g := range gets {
				if g.path != activityPath {
					problems = append(problems, "GET of "+g.path)
				}
			}
			patches := api.of("PATCH")
			if e.MorePatches == nil && len(patches) != len(e.Patches) {
				var bodies []any
				for _, p := range patches {
					bodies = append(bodies, p.body)
				}
				problems = append(problems, fmt.Sprintf("%d patches, want %d: %v", len(patches), len(e.Patches), bodies))
			}
			if least := max(len(e.Patches), e.MinPatches); len(patches) < least {
				problems = append(problems, fmt.Sprintf("%d patches, want at least %d", len(patches), least))
			}
			for i, p := range patches {
				matcher := e.MorePatches
				if i < len(e.Patches) {
					matcher = e.Patches[i]
				}
				if matcher != nil {
					problems = append(problems, checkPatch(i, p, matcher, sc.Attempt)...)
				}
			}
			for _, g := range e.Gaps {
				if g.To < len(patches) {
					if seen := patches[g.To].at.Sub(patches[g.From].at); seen < time.Duration(g.AtLeastMs*float64(time.Millisecond)) {
						problems = append(problems, fmt.Sprintf("patches %d→%d %s apart, want ≥ %vms", g.From, g.To, seen, g.AtLeastMs))
					}
				}
			}
			if len(problems) > 0 {
				t.Errorf("%s", strings.Join(problems, "\n"))
			}
		})
	}
}

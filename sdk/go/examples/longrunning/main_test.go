package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/heartbeat-dev/activity-operator/sdk/go/activity"
)

// cluster plays the API server and the operator's part that matters here: it keeps the last
// heartbeat details across attempts and records each attempt's outcome.
type cluster struct {
	mu       sync.Mutex
	attempt  int
	details  json.RawMessage
	outcomes []map[string]any
}

func (c *cluster) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.Method == http.MethodPatch {
		raw, _ := io.ReadAll(r.Body)
		var ops []struct {
			Path  string          `json:"path"`
			Value json.RawMessage `json:"value"`
		}
		_ = json.Unmarshal(raw, &ops)
		for _, op := range ops {
			switch op.Path {
			case "/status/heartbeatDetails":
				c.details = op.Value
			case "/status/outcome":
				var o map[string]any
				_ = json.Unmarshal(op.Value, &o)
				c.outcomes = append(c.outcomes, o)
			}
		}
	}
	status := map[string]any{"attempt": c.attempt}
	if c.details != nil {
		status["heartbeatDetails"] = c.details
	}
	out, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{"name": "a", "namespace": "ns"},
		"spec":     map[string]any{"heartbeatTimeout": "5s", "input": Input{TotalItems: 10, FailAfter: 3, ItemDuration: "1ms"}},
		"status":   status,
	})
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

func TestSucceedsOnAttempt4WithEveryItemProcessedOnce(t *testing.T) {
	seen := map[int]int{}
	processItem = func(_ context.Context, i int, _ time.Duration) error {
		seen[i]++
		return nil
	}
	c := &cluster{}
	srv := httptest.NewServer(c)
	defer srv.Close()
	var codes []int
	for attempt := 1; attempt <= 4; attempt++ {
		c.mu.Lock()
		c.attempt = attempt
		c.mu.Unlock()
		codes = append(codes, activity.Execute(context.Background(), LongRunningActivity, activity.Options{
			Name: "a", Namespace: "ns", Attempt: int32(attempt), Config: &rest.Config{Host: srv.URL},
		}))
	}
	if want := []int{1, 1, 1, 0}; !equal(codes, want) {
		t.Fatalf("exit codes %v, want %v", codes, want)
	}
	for i := 0; i < 10; i++ {
		if seen[i] != 1 {
			t.Fatalf("item %d processed %d times: %v", i, seen[i], seen)
		}
	}
	for i, o := range c.outcomes[:3] {
		f, _ := o["failure"].(map[string]any)
		if o["succeeded"] != false || f["type"] != "BatchInterrupted" || f["nonRetryable"] != false {
			t.Fatalf("attempt %d: %v", i+1, o)
		}
	}
	last := c.outcomes[3]
	if last["succeeded"] != true || last["attempt"] != 4.0 || last["result"].(map[string]any)["processed"] != 10.0 {
		t.Fatalf("attempt 4: %v", last)
	}
	if string(c.details) != "9" {
		t.Fatalf("last heartbeat details %s, want 9", c.details)
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

package activity

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func p(v string) pending { return pending{details: json.RawMessage(v)} }

func TestIntervalIsFourFifthsOfTheTimeoutCappedElseThirtySeconds(t *testing.T) {
	for timeout, want := range map[time.Duration]time.Duration{
		5 * time.Second: 4 * time.Second, 10 * time.Second: 8 * time.Second,
		10 * time.Minute: time.Minute, 0: 30 * time.Second,
	} {
		if got := HeartbeatInterval(timeout); got != want {
			t.Errorf("HeartbeatInterval(%s) = %s, want %s", timeout, got, want)
		}
	}
}

func TestFirstHeartbeatAtOnceThenOnePerIntervalLatestWins(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	th := newThrottle(5 * time.Second) // interval 4 s
	if _, ok := th.due(); ok {
		t.Fatal("due while idle")
	}
	th.record(p("1"))
	if got := th.takeDue(at(0)); got == nil || string(got.details) != "1" {
		t.Fatalf("first heartbeat not sent at once: %v", got)
	}
	th.delivered(at(0))
	th.record(p("2"))
	th.record(p("3"))
	if got := th.takeDue(at(3999)); got != nil {
		t.Fatalf("sent within the interval: %s", got.details)
	}
	if got := th.takeDue(at(4000)); got == nil || string(got.details) != "3" {
		t.Fatalf("latest details did not win: %v", got)
	}
	th.delivered(at(4000))
	// A liveness-only heartbeat does not replace pending details.
	th.record(p("4"))
	th.record(pending{liveness: true})
	if got := th.takePending(); got == nil || string(got.details) != "4" {
		t.Fatalf("liveness replaced details: %v", got)
	}
}

func TestFailedSendsBackOffAndGiveUpAfterTheHeartbeatTimeout(t *testing.T) {
	t0 := time.Now()
	th := newThrottle(time.Second)
	th.record(p("1"))
	d := th.takeDue(t0)
	th.record(p("2")) // newer details arrive while the send is in flight
	retry, giveUp, _ := th.failed(d, t0, t0.Add(100*time.Millisecond), 0)
	if giveUp || retry != t0.Add(300*time.Millisecond) {
		t.Fatalf("first retry at %v (give up %v), want +300ms", retry.Sub(t0), giveUp)
	}
	if got := th.takeDue(retry); string(got.details) != "2" {
		t.Fatalf("the failed details replaced newer ones: %s", got.details)
	}
	retry, _, _ = th.failed(p("2").ptr(), retry, retry.Add(100*time.Millisecond), 3*time.Second)
	if limit := t0.Add(time.Second); retry.After(limit) {
		t.Fatalf("retry at %v is past the give-up limit", retry.Sub(t0))
	}
	_, giveUp, undelivered := th.failed(th.takePending(), t0, t0.Add(1100*time.Millisecond), 0)
	if !giveUp || undelivered < time.Second {
		t.Fatalf("did not give up after the heartbeat timeout: %v %v", giveUp, undelivered)
	}
	if th.takePending() == nil {
		t.Fatal("details lost: the final flush needs them")
	}
}

func (p pending) ptr() *pending { return &p }

func TestBackoffDoublesAndIsCapped(t *testing.T) {
	if backoff(1) != 200*time.Millisecond || backoff(2) != 400*time.Millisecond || backoff(10) != 5*time.Second {
		t.Fatal(backoff(1), backoff(2), backoff(10))
	}
}

func TestClassify(t *testing.T) {
	status := func(code int32, causes int, retryAfter int32) error {
		s := metav1.Status{Status: metav1.StatusFailure, Code: code, Message: "m", Details: &metav1.StatusDetails{RetryAfterSeconds: retryAfter}}
		for range causes {
			s.Details.Causes = append(s.Details.Causes, metav1.StatusCause{Message: "bad"})
		}
		return &apierrors.StatusError{ErrStatus: s}
	}
	cases := []struct {
		err  error
		kind failureKind
		wait time.Duration
	}{
		{status(422, 0, 0), superseded, 0}, {status(422, 1, 0), fatal, 0}, {status(403, 0, 0), forbidden, 0},
		{status(404, 0, 0), notFound, 0}, {status(429, 0, 7), retryable, 7 * time.Second},
		{status(429, 0, 0), retryable, time.Second}, {status(409, 0, 0), retryable, 0},
		{status(503, 0, 0), retryable, 0}, {status(400, 0, 0), fatal, 0}, {errors.New("connection refused"), retryable, 0},
	}
	for i, c := range cases {
		if f := classify(c.err); f.kind != c.kind || f.retryAfter != c.wait {
			t.Errorf("case %d: %+v", i, f)
		}
	}
}

func TestPatchesAndOutcome(t *testing.T) {
	ts := time.Date(2026, 11, 21, 20, 40, 0, 123456789, time.UTC)
	b, _ := heartbeatPatch(3, ts, &pending{details: json.RawMessage(`{"lastItem":2}`)})
	want := `[{"op":"test","path":"/status/attempt","value":3},{"op":"add","path":"/status/lastHeartbeatTime","value":"2026-11-21T20:40:00.123456Z"},{"op":"add","path":"/status/heartbeatDetails","value":{"lastItem":2}}]`
	if string(b) != want {
		t.Fatalf("%s", b)
	}
	o := &outcome{Attempt: 2, Failure: &failure{Type: "X", Message: "m", NextRetryDelay: (90 * time.Second).String()}}
	b, _ = outcomePatch(2, ts, nil, o)
	want = `[{"op":"test","path":"/status/attempt","value":2},{"op":"add","path":"/status/outcome","value":{"attempt":2,"succeeded":false,"failure":{"type":"X","message":"m","nonRetryable":false,"nextRetryDelay":"1m30s"}}}]`
	if string(b) != want {
		t.Fatalf("%s", b)
	}
	if _, err := toPayload("result", string(make([]byte, MaxPayloadBytes))); err == nil {
		t.Fatal("oversized payload accepted")
	}
}

func TestCancelIn(t *testing.T) {
	decode := func(s string) *activityObject {
		var a activityObject
		if err := json.Unmarshal([]byte(s), &a); err != nil {
			t.Fatal(err)
		}
		return &a
	}
	cases := map[string]Cause{
		`{"status":{"attempt":2}}`:                        "",
		`{"status":{"attempt":3}}`:                        CauseSuperseded,
		`{"spec":{"paused":true},"status":{"attempt":2}}`: CausePaused,
		`{"spec":{"reset":{"requestedAt":"t1"}},"status":{"attempt":2,"lastReset":{"requestedAt":"t1"}}}`:               "",
		`{"spec":{"reset":{"requestedAt":"t2"},"paused":true},"status":{"attempt":2,"lastReset":{"requestedAt":"t1"}}}`: CauseReset,
		`{"metadata":{"deletionTimestamp":"x"},"spec":{"paused":true},"status":{"attempt":2}}`:                          CauseCanceled,
	}
	for s, want := range cases {
		if got := cancelIn(decode(s), 2); got != want {
			t.Errorf("%s: %q, want %q", s, got, want)
		}
	}
}

// Command longrunning is the seed's LongRunningActivity ported to the activity SDK: it processes
// items one at a time, heartbeats the index of each finished item, resumes after the last
// heartbeated one, and fails (retryably) after FailAfter items in one attempt, so that with 10
// items and FailAfter 3 the Activity ends Succeeded on attempt 4, each item processed once (as
// `activity-worker demo batch --total 10 --fail-after 3`).
//
// The Temporal options of the seed's HeartbeatWorkflow become the Activity's spec (see
// activity.yaml beside this file); its input is {"totalItems": 10, "failAfter": 3, "itemDuration": "1s"}.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/heartbeat-dev/activity-operator/sdk/go/activity"
)

// Input is spec.input.
type Input struct {
	TotalItems   int    `json:"totalItems"`
	FailAfter    int    `json:"failAfter"`
	ItemDuration string `json:"itemDuration"`
}

// Result is the Activity's result.
type Result struct {
	Processed int `json:"processed"`
}

// processItem is the work on one item (a variable so that tests can count the calls).
var processItem = func(ctx context.Context, i int, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		slog.Info(fmt.Sprintf("processed item %d", i))
		return nil
	}
}

// LongRunningActivity processes items in.TotalItems one at a time.
func LongRunningActivity(ctx context.Context, in Input) (Result, error) {
	itemDuration, err := time.ParseDuration(in.ItemDuration)
	if err != nil {
		itemDuration = time.Second
	}
	next := 0
	if activity.HasHeartbeatDetails(ctx) {
		var lastCompleted int
		if err := activity.GetHeartbeatDetails(ctx, &lastCompleted); err == nil {
			next = lastCompleted + 1
		}
	}
	info := activity.GetInfo(ctx)
	slog.Info("starting", "attempt", info.Attempt, "from", next, "total", in.TotalItems)
	done := 0
	for i := next; i < in.TotalItems; i++ {
		if err := processItem(ctx, i, itemDuration); err != nil {
			return Result{}, err // canceled: activity.CancelCause(ctx) says why
		}
		activity.RecordHeartbeat(ctx, i)
		done++
		if in.FailAfter > 0 && done >= in.FailAfter && i+1 < in.TotalItems {
			return Result{}, activity.NewApplicationError(
				fmt.Sprintf("interrupted after %d items in attempt %d (last item %d)", done, info.Attempt, i), "BatchInterrupted")
		}
	}
	return Result{Processed: in.TotalItems}, nil
}

func main() {
	activity.Run(LongRunningActivity)
}
